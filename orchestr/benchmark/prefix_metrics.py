"""The server's prefix-cache counters, read from its Prometheus ``/metrics`` before and after a
workload: the hit rate during the workload. vLLM and orchestr's workers count prompt tokens looked
up in the cache (``vllm:prefix_cache_queries``) and found there (``vllm:prefix_cache_hits``);
older vLLM versions prefix the names with ``gpu_``. A server without them has no hit rate (None)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

QUERIES = ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
HITS = ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")


@dataclass(frozen=True)
class PrefixCounters:
    queries: float
    hits: float


def parse_counters(text: str) -> PrefixCounters | None:
    """Sums of the query and hit counters over all label sets (engines of a multi-model worker)."""
    from prometheus_client.parser import text_string_to_metric_families

    queries = hits = 0.0
    found = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in QUERIES:
                queries += sample.value
                found = True
            elif name in HITS:
                hits += sample.value
    return PrefixCounters(queries, hits) if found else None


def scrape(url: str | None, headers: dict[str, str] | None = None) -> PrefixCounters | None:
    """The counters at ``url`` now; None when there is no URL, no answer or no such counters."""
    if not url:
        return None
    try:
        r = httpx.get(url, headers=headers or {}, timeout=10.0)
        if r.status_code != 200:
            return None
        return parse_counters(r.text)
    except (httpx.HTTPError, ValueError):
        return None


def hit_rate(before: PrefixCounters | None, after: PrefixCounters | None) -> dict | None:
    """Queried and hit tokens between two scrapes and their ratio (None without both scrapes)."""
    if before is None or after is None:
        return None
    queries, hits = after.queries - before.queries, after.hits - before.hits
    return {"queried_tokens": int(queries), "hit_tokens": int(hits),
            "hit_rate": round(hits / queries, 4) if queries > 0 else None}
