"""Engine throughput on the embedded model, no HTTP: output tokens/s at several concurrency
levels, batched vs unbatched, fp32 vs bf16. Figures, not a test.

    python scripts/bench_engine.py                      # c=1,4,16; bf16+fp32; batched+unbatched
    python scripts/bench_engine.py --dtypes bfloat16 --concurrency 16,64 --modes batched
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from orchestr.config.serving import EngineConfig
from orchestr.engine.engine import Engine
from orchestr.engine.loader import load_model
from orchestr.protocol import ChatMessage, GenerateRequest

PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Write a long story about a robot exploring an abandoned city.",
    "Write a long story about a cat that becomes the mayor of a small town.",
    "Write a long story about a ship lost in a storm.",
    "Write a long story about two friends who build a treehouse.",
    "Write a long story about a king who gives away his crown.",
    "Write a long story about a river that flows uphill.",
    "Write a long story about a musician who hears colours.",
]


async def run_level(engine: Engine, concurrency: int, requests: int, max_tokens: int) -> dict:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    tokens, ttfts = 0, []

    async def client() -> None:
        nonlocal tokens
        while not queue.empty():
            i = queue.get_nowait()
            req = GenerateRequest(model="m", messages=[ChatMessage(role="user", content=PROMPTS[i % len(PROMPTS)])],
                                  temperature=0.0, max_new_tokens=max_tokens)
            start, first = time.perf_counter(), None
            async for chunk in engine.generate_stream(req):
                if first is None and chunk.text:
                    first = time.perf_counter() - start
                if chunk.finish_reason is not None and chunk.usage:
                    tokens += chunk.usage.completion_tokens
            ttfts.append(first or 0.0)

    t0 = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": requests, "output_tokens": tokens, "seconds": round(wall, 2),
            "tok_s": round(tokens / wall, 1), "ttft_p50_s": round(statistics.median(ttfts), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default="embedded://SmolLM2-135M-Instruct")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--modes", default="batched,unbatched")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests-per-client", type=int, default=1,
                    help="requests = concurrency x this (at least --min-requests)")
    ap.add_argument("--min-requests", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-batch-size", type=int, default=EngineConfig.max_batch_size)
    ap.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens)
    ap.add_argument("--threads", type=int, default=None, help="model threads (default: engine's)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()

    rows = []
    for dtype in args.dtypes.split(","):
        model, tok = load_model(args.model_path, device="cpu", dtype=dtype)
        for mode in args.modes.split(","):
            cfg = EngineConfig(batching=mode == "batched", max_batch_size=args.max_batch_size,
                               max_num_batched_tokens=args.max_num_batched_tokens, kv_cache_tokens=16384)
            engine = Engine(model, tok, cfg, threads=args.threads).start()
            asyncio.run(run_level(engine, 1, 1, 8))  # warm-up
            for c in (int(x) for x in args.concurrency.split(",")):
                n = max(args.min_requests, c * args.requests_per_client)
                row = {"dtype": dtype, "mode": mode, **asyncio.run(run_level(engine, c, n, args.max_tokens))}
                rows.append(row)
                print(f"{dtype:9s} {mode:9s} c={c:<3d} {row['tok_s']:7.1f} tok/s  "
                      f"({row['output_tokens']} tokens in {row['seconds']} s, TTFT p50 {row['ttft_p50_s']} s)",
                      flush=True)
            engine.shutdown()
            del engine
    by_key = {(r["dtype"], r["mode"], r["concurrency"]): r["tok_s"] for r in rows}
    for (dtype, mode, c), tok_s in by_key.items():
        base = by_key.get((dtype, "unbatched", c))
        if mode == "batched" and base:
            print(f"{dtype:9s} c={c:<3d} batched/unbatched = {tok_s / base:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
