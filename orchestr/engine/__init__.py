"""Model engine: loading (GGUF -> cached safetensors, dtype, 8-bit), chat templates and the
batching scheduler the transformers worker runs on."""
