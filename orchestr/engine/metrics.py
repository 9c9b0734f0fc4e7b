"""Prometheus metrics of the batching engine, named as vLLM names them (``vllm:...``) so
dashboards made for vLLM read them unchanged. One set of metric objects per process (several
engines of a multi-model worker share them, told apart by ``model_name``)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                480.0, 960.0, 1920.0, 7680.0)

_metrics: dict[str, Any] | None = None


def _shared() -> dict[str, Any]:
    global _metrics
    if _metrics is None:
        lb = ["model_name"]
        _metrics = {
            "ttft": Histogram("vllm:time_to_first_token_seconds", "Time to first token.", lb,
                              buckets=_TTFT_BUCKETS, registry=REGISTRY),
            "itl": Histogram("vllm:inter_token_latency_seconds", "Time between two output tokens.", lb,
                             buckets=_ITL_BUCKETS, registry=REGISTRY),
            "e2e": Histogram("vllm:e2e_request_latency_seconds", "Request latency, arrival to finish.", lb,
                             buckets=_E2E_BUCKETS, registry=REGISTRY),
            "prompt": Counter("vllm:prompt_tokens", "Prefilled prompt tokens.", lb, registry=REGISTRY),
            "gen": Counter("vllm:generation_tokens", "Generated tokens.", lb, registry=REGISTRY),
            "success": Counter("vllm:request_success", "Finished requests.", [*lb, "finished_reason"],
                               registry=REGISTRY),
            "preempt": Counter("vllm:num_preemptions", "Preemptions (KV cache full).", lb, registry=REGISTRY),
            "running": Gauge("vllm:num_requests_running", "Requests in the running batch.", lb,
                             registry=REGISTRY),
            "waiting": Gauge("vllm:num_requests_waiting", "Requests waiting to be admitted.", lb,
                             registry=REGISTRY),
            "kv_usage": Gauge("vllm:kv_cache_usage_perc", "KV-cache usage (1 = full).", lb, registry=REGISTRY),
            "kv_blocks": Gauge("orchestr:kv_cache_blocks_used", "KV-cache blocks in use.", lb, registry=REGISTRY),
            "kv_cached": Gauge("orchestr:kv_cache_blocks_cached", "KV-cache blocks findable by prefix caching "
                               "(held by a sequence or kept for reuse).", lb, registry=REGISTRY),
            "pc_queries": Counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", lb,
                                  registry=REGISTRY),
            "pc_hits": Counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", lb,
                               registry=REGISTRY),
        }
    return _metrics


class EngineMetrics:
    """What one engine reports; the scheduler thread calls these (cheap: a few counter adds)."""

    def __init__(self, model_name: str, engine: Any) -> None:
        m = _shared()
        self.ttft, self.itl, self.e2e = (m[k].labels(model_name) for k in ("ttft", "itl", "e2e"))
        self.prompt, self.gen, self.preempt = (m[k].labels(model_name) for k in ("prompt", "gen", "preempt"))
        self._success = m["success"]
        self.pc_queries, self.pc_hits = m["pc_queries"].labels(model_name), m["pc_hits"].labels(model_name)
        self.model_name = model_name
        cache = engine.cache
        m["running"].labels(model_name).set_function(lambda: len(engine.sched.running))
        m["waiting"].labels(model_name).set_function(lambda: len(engine.sched.waiting))
        m["kv_usage"].labels(model_name).set_function(
            lambda: 1.0 - cache.free_tokens() / max(1, cache.capacity_tokens))
        m["kv_blocks"].labels(model_name).set_function(
            lambda: cache.used_blocks())
        m["kv_cached"].labels(model_name).set_function(lambda: cache.pool.cached_count())

    def on_prefix_lookup(self, queried: int, hit: int) -> None:
        self.pc_queries.inc(queried)
        self.pc_hits.inc(hit)

    def on_token(self, seq: Any) -> None:
        now = time.monotonic()
        if seq.last_token_at is None:
            self.ttft.observe(now - seq.arrival)
            self.prompt.inc(len(seq.prompt_ids))
        else:
            self.itl.observe(now - seq.last_token_at)
        seq.last_token_at = now
        self.gen.inc()

    def on_finish(self, seq: Any, reason: str) -> None:
        self.e2e.observe(time.monotonic() - seq.arrival)
        self._success.labels(self.model_name, reason).inc()
