"""The workloads beside the fixed prompt set (``--workload``), each run against one endpoint:

* ``multiturn``: N conversations at once, T turns each, over one shared system prompt; every turn
  resends the whole history with the assistant's actual answers, as a chat client does;
* ``random``: prompts and answer lengths drawn from length distributions (seeded), at each
  concurrency level, optionally arriving as a Poisson process (``--request-rate``);
* ``sharegpt``: first exchanges of a ShareGPT conversations file, reference answer lengths;
* ``hol``: head-of-line probe: a short chat sent just after a cold long prompt, its time to first
  token against its time alone; then the same long prompt again (prefix reuse).

Inputs are built once (``prepare``) so every endpoint gets the same requests. All requests stream
with temperature 0 and ask for the server's usage, so prompt token counts are the server's own.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestr.benchmark.client import RequestRecord, RequestSpec, stream_request
from orchestr.benchmark.lengths import LengthDist
from orchestr.benchmark.prefix_metrics import hit_rate, scrape
from orchestr.benchmark.runner import RssSampler, _loadavg, run_specs
from orchestr.benchmark.servers import Endpoint
from orchestr.benchmark.sharegpt import load_sharegpt
from orchestr.benchmark.stats import percentile
from orchestr.benchmark.synthetic import Counter, document, system_prompt, user_turn
from orchestr.services.stream_client import StreamClient

WORKLOADS = ("fixed", "multiturn", "random", "sharegpt", "hol")
SHORT_CHAT = "Tell me a joke."  # the head-of-line probe: 5 tokens of the embedded tokenizer


@dataclass
class Workload:
    """What ``prepare`` builds from the options: the same inputs for every endpoint."""

    name: str
    options: dict[str, Any]
    system: str = ""  # multiturn
    prompts: list[tuple[list[dict[str, str]], int]] = field(default_factory=list)  # random/sharegpt: (messages, max_tokens)
    arrivals: list[float] | None = None  # random/sharegpt with --request-rate
    long_messages: list[dict[str, str]] = field(default_factory=list)  # hol


@dataclass
class Target:
    """One endpoint as the workloads see it."""

    endpoint: Endpoint
    model: str
    api_key: str | None
    timeout_s: float
    count: Counter
    progress: bool = False

    def spec(self, messages: list[dict[str, str]], max_tokens: int) -> RequestSpec:
        ep = self.endpoint
        return RequestSpec(protocol=ep.protocol, base_url=ep.base_url, model=self.model, messages=messages,
                           max_tokens=max_tokens, api_key=self.api_key, include_usage=True)

    def client(self, connections: int) -> StreamClient:
        return StreamClient(connect_timeout=30.0, read_timeout=self.timeout_s, max_idle_per_host=connections + 4)


# --------------------------------------------------------------------------- inputs


def prepare(name: str, options: dict[str, Any], count: Counter) -> Workload:
    """Build a workload's inputs; raises BenchError (e.g. a bad --dataset)."""
    w = Workload(name, options)
    seed = options.get("seed", 0)
    if name == "multiturn":
        w.system = system_prompt(options["system_prompt_tokens"], count, seed)
        options["system_prompt_tokens_actual"] = count(w.system)
    elif name == "random":
        rng = random.Random(seed)
        n = options["num_prompts"]
        in_dist: LengthDist = options["input_len_dist"]
        out_dist: LengthDist = options["output_len_dist"]
        inputs, outputs = in_dist.sample(rng, n), out_dist.sample(rng, n)
        w.prompts = [([{"role": "user", "content": document(k, count, seed=seed * 1_000_003 + i)}], o)
                     for i, (k, o) in enumerate(zip(inputs, outputs, strict=True))]
        options["input_len_dist"], options["output_len_dist"] = str(in_dist), str(out_dist)
        options["input_tokens_mean"] = round(statistics.fmean(inputs), 1)
        options["output_tokens_mean"] = round(statistics.fmean(outputs), 1)
    elif name == "sharegpt":
        pairs = load_sharegpt(Path(options["dataset"]), count, num_prompts=options["num_prompts"], seed=seed,
                              max_len=options["max_model_len"])
        w.prompts = [([{"role": "user", "content": p.prompt}], p.output_tokens) for p in pairs]
        options["dataset"] = str(options["dataset"])
        options["prompts_used"] = len(pairs)
        options["input_tokens_mean"] = round(statistics.fmean(p.prompt_tokens for p in pairs), 1)
        options["output_tokens_mean"] = round(statistics.fmean(p.output_tokens for p in pairs), 1)
    elif name == "hol":
        # A start no server has seen (nothing to reuse, even from an earlier run), then a document.
        opening = f"Session {os.urandom(6).hex()}. You are a careful reader who answers in one sentence."
        question = "Summarise the text above in one sentence."
        body = options["long_prompt_tokens"] - count(opening) - count(question) - 1
        w.long_messages = [{"role": "system", "content": opening},
                           {"role": "user", "content": f"{document(max(body, 1), count, seed)}\n{question}"}]
    if name in ("random", "sharegpt") and options.get("request_rate"):
        rng = random.Random(seed + 1)
        t, w.arrivals = 0.0, []
        for _ in w.prompts:
            w.arrivals.append(t)
            t += rng.expovariate(options["request_rate"])
    return w


# --------------------------------------------------------------------------- running


def run_workload(w: Workload, target: Target, concurrency: list[int]) -> dict:
    """The workload's figures for one endpoint, with the prefix-cache hit rate when the server
    has the counters."""
    ep = target.endpoint
    before = scrape(ep.metrics_url, ep.metrics_headers)
    if w.name == "multiturn":
        out = run_multiturn(w, target)
    elif w.name == "hol":
        out = run_hol(w, target)
    else:
        out = {"levels": [run_prompt_level(w, target, c) for c in concurrency]}
    rate = hit_rate(before, scrape(ep.metrics_url, ep.metrics_headers))
    if rate is not None:
        out["prefix_cache"] = rate
    return out


def run_prompt_level(w: Workload, target: Target, concurrency: int) -> dict:
    specs = [target.spec(messages, max_tokens) for messages, max_tokens in w.prompts]
    result, records = run_specs(specs, concurrency=concurrency, count_tokens=target.count,
                                timeout_s=target.timeout_s, rss_pids=target.endpoint.pids,
                                progress=target.progress, label=target.endpoint.name, arrivals=w.arrivals)
    level = result.to_dict()
    level["request_rate"] = w.options.get("request_rate")
    level["prompt_tokens_mean"] = _mean([r.prompt_tokens for r in records if r.ok])
    return level


def run_multiturn(w: Workload, target: Target) -> dict:
    o = w.options
    n, turns, answer = o["conversations"], o["turns"], o["answer_tokens"]

    async def conversation(client: StreamClient, conv: int) -> list[RequestRecord]:
        messages = [{"role": "system", "content": w.system}]
        records = []
        for turn in range(turns):
            messages.append({"role": "user", "content": user_turn(conv, turn, o.get("seed", 0))})
            rec = await stream_request(client, target.spec(list(messages), answer), conv * turns + turn)
            records.append(rec)
            if not rec.ok:  # the next turn needs this answer
                break
            messages.append({"role": "assistant", "content": rec.text})
        return records

    async def all_conversations() -> tuple[list[list[RequestRecord]], float]:
        client = target.client(n)
        try:
            t0 = time.perf_counter()
            convs = await asyncio.gather(*(conversation(client, c) for c in range(n)))
            return convs, time.perf_counter() - t0
        finally:
            await client.aclose()

    load_before = _loadavg()
    with RssSampler(target.endpoint.pids) as rss:
        convs, wall = asyncio.run(all_conversations())
    by_turn: list[list[RequestRecord]] = [[c[t] for c in convs if len(c) > t] for t in range(turns)]
    records = [r for c in convs for r in c]
    for r in records:
        r.output_tokens = target.count(r.text) if r.ok else 0
    ok = [r for r in records if r.ok]
    first = [r.ttft for r in by_turn[0] if r.ok and r.ttft is not None]
    later = [r.ttft for t in by_turn[1:] for r in t if r.ok and r.ttft is not None]
    tokens = sum(r.output_tokens for r in ok)
    return {
        "conversations": n, "turns": turns, "wall_s": round(wall, 3),
        "requests": n * turns, "completed": len(ok), "failed": n * turns - len(ok),
        "output_tokens": tokens, "output_tok_s": round(tokens / wall, 2) if wall > 0 else 0.0,
        **_ttfts("ttft_turn1", first), **_ttfts("ttft_later", later),
        "per_turn": [{"turn": t + 1,
                      "prompt_tokens": [r.prompt_tokens for r in recs if r.ok],
                      "prompt_tokens_mean": _mean([r.prompt_tokens for r in recs if r.ok]),
                      "output_tokens": [r.output_tokens for r in recs if r.ok],
                      **_ttfts("ttft", [r.ttft for r in recs if r.ok and r.ttft is not None])}
                     for t, recs in enumerate(by_turn)],
        "peak_rss_mb": dict(rss.peak_mb), "loadavg": [load_before, _loadavg()],
        "errors": sorted({r.error for r in records if not r.ok and r.error})[:5],
    }


def run_hol(w: Workload, target: Target) -> dict:
    o = w.options
    answer, delay = o["answer_tokens"], o["probe_delay"]
    short = [{"role": "user", "content": SHORT_CHAT}]

    async def probe() -> dict[str, Any]:
        client = target.client(2)
        try:
            alone = [await stream_request(client, target.spec(short, answer), i) for i in range(o["probe_repeats"])]

            async def short_later() -> RequestRecord:
                await asyncio.sleep(delay)
                return await stream_request(client, target.spec(short, answer), 100)

            cold, behind = await asyncio.gather(stream_request(client, target.spec(w.long_messages, answer), 101),
                                                short_later())
            repeat = await stream_request(client, target.spec(w.long_messages, answer), 102)
            return {"alone": alone, "cold": cold, "behind": behind, "repeat": repeat}
        finally:
            await client.aclose()

    load_before = _loadavg()
    recs = asyncio.run(probe())
    bad = [r for r in (*recs["alone"], recs["cold"], recs["behind"], recs["repeat"]) if not r.ok]
    alone = [r.ttft for r in recs["alone"] if r.ok and r.ttft is not None]
    alone_s = statistics.median(alone) if alone else None
    behind_s = recs["behind"].ttft if recs["behind"].ok else None
    return {
        "short_prompt": SHORT_CHAT, "short_prompt_tokens": recs["behind"].prompt_tokens,
        "short_alone_ttft_s": _r(alone_s), "short_alone_ttfts_s": [_r(x) for x in alone],
        "short_behind_long_ttft_s": _r(behind_s),
        "slowdown": round(behind_s / alone_s, 2) if behind_s and alone_s else None,
        "probe_delay_s": delay,
        "long_prompt_tokens": recs["cold"].prompt_tokens,
        "long_cold_ttft_s": _r(recs["cold"].ttft if recs["cold"].ok else None),
        "long_repeat_ttft_s": _r(recs["repeat"].ttft if recs["repeat"].ok else None),
        "requests": len(recs["alone"]) + 3, "failed": len(bad), "loadavg": [load_before, _loadavg()],
        "errors": sorted({r.error for r in bad if r.error})[:5],
    }


# --------------------------------------------------------------------------- figures


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _mean(xs: list[int | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.fmean(vals), 1) if vals else None


def _ttfts(prefix: str, values: list[float]) -> dict[str, float | None]:
    return {f"{prefix}_p50_s": _r(percentile(values, 50)), f"{prefix}_p90_s": _r(percentile(values, 90))}
