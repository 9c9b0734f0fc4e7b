"""HTTP services: controller, model workers, OpenAI API server, web UI."""
