"""Throughput with structured outputs mixed in: c concurrent chat streams against a running
OpenAI-compatible server, once all unconstrained and once with a share of them constrained by a JSON
schema (``response_format`` json_schema), same prompts and budgets. Prints output tokens/s of each run
and their ratio (issue 16's target: >= 0.9 at c=16 with 25 % constrained).

    python scripts/bench_structured.py --api-base http://127.0.0.1:8000/v1 --model smollm2-135m \
        --concurrency 16 --requests 64 --constrained 0.25 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import time

import openai

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "color": {"type": "string", "enum": ["red", "green", "blue"]},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}


async def one(client: openai.AsyncOpenAI, args, i: int, constrained: bool) -> int:
    kw = {}
    if constrained:
        kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    r = await client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": f"Describe person number {i}."}],
        max_tokens=args.max_tokens, temperature=0.8, seed=i, **kw)
    return r.usage.completion_tokens


async def run(args, share: float) -> tuple[float, int]:
    client = openai.AsyncOpenAI(base_url=args.api_base, api_key=args.api_key, max_retries=0, timeout=600)
    every = round(1 / share) if share > 0 else 0
    sem = asyncio.Semaphore(args.concurrency)

    async def task(i: int) -> int:
        async with sem:
            return await one(client, args, i, bool(every) and i % every == 0)

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(task(i) for i in range(args.requests))))
    elapsed = time.perf_counter() - start
    await client.close()
    return tokens / elapsed, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--api-base", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--api-key", default="EMPTY")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--constrained", type=float, default=0.25, help="share of requests under the schema")
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    warm = argparse.Namespace(**{**vars(args), "requests": args.concurrency})
    asyncio.run(run(warm, 1.0))  # warm-up; the first constrained request also compiles the grammar
    base, base_tokens = asyncio.run(run(args, 0.0))
    mixed, mixed_tokens = asyncio.run(run(args, args.constrained))
    print(f"unconstrained: {base:.1f} tok/s ({base_tokens} tokens)")
    print(f"{args.constrained:.0%} constrained: {mixed:.1f} tok/s ({mixed_tokens} tokens)")
    print(f"ratio: {mixed / base:.2f}")


if __name__ == "__main__":
    main()
