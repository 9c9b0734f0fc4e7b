"""Serving benchmarks: `orchestr bench serve` drives OpenAI-compatible servers (or an orchestr
worker directly) with concurrent streaming clients and reports throughput and latency."""
