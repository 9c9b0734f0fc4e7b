"""Figures of one benchmark level from its request records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from orchestr.benchmark.client import RequestRecord


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    completed: int
    failed: int
    duration_s: float
    output_tokens: int
    output_tok_s: float
    req_s: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    mean_output_tokens: float
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # per server process, if known
    loadavg: list[float | None] = field(default_factory=list)  # 1-min load average before/after
    errors: list[str] = field(default_factory=list)  # the first few, for the report

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(concurrency: int, records: list[RequestRecord], duration_s: float) -> LevelResult:
    ok = [r for r in records if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    lat = [r.latency for r in ok]
    errors = [r.error for r in records if not r.ok and r.error]
    return LevelResult(
        concurrency=concurrency,
        requests=len(records),
        completed=len(ok),
        failed=len(records) - len(ok),
        duration_s=duration_s,
        output_tokens=tokens,
        output_tok_s=tokens / duration_s if duration_s > 0 else 0.0,
        req_s=len(ok) / duration_s if duration_s > 0 else 0.0,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        latency_p50_s=percentile(lat, 50),
        latency_p99_s=percentile(lat, 99),
        mean_output_tokens=tokens / len(ok) if ok else 0.0,
        errors=sorted(set(errors))[:5],
    )
