"""Where a batched decode step of the transformers engine spends its time.

Runs the engine on the embedded model with N concurrent greedy streams and, once every stream
is decoding (no prefill in the step), profiles a number of steps with torch.profiler. orchestr's
C kernels are called through ctypes, which the profiler cannot see, so each is wrapped in a
labelled range; so are the scheduler and the sampler. Prints a table per operation: time per
step and share of the step. Figures, not a test; docs/profile.md holds one run.

    python scripts/profile_decode.py                      # 16 streams, bf16, 20 steps
    python scripts/profile_decode.py --streams 64 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import threading
import time

from torch.profiler import ProfilerActivity, profile, record_function

from orchestr.config.serving import EngineConfig
from orchestr.engine import engine as engine_module
from orchestr.engine import native
from orchestr.engine.engine import Engine
from orchestr.engine.loader import load_model
from orchestr.protocol import ChatMessage, GenerateRequest

PROMPT = "Write a long story about a dragon who learns to bake bread, with many details."
NATIVE = ["paged_decode", "rms_norm", "rotary_", "add_rms_norm_", "argmax_rows", "int8_linear"]


def labelled(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default="embedded://SmolLM2-135M-Instruct")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="pin the model's threads (default: the engine's)")
    ap.add_argument("--rows", type=int, default=18, help="operations listed")
    args = ap.parse_args()

    for name in NATIVE:
        setattr(native, name, labelled(f"orchestr C: {name}", getattr(native, name)))
    engine_module.sample_with_logprobs = labelled("sampler", engine_module.sample_with_logprobs)

    model, tok = load_model(args.model_path, device="cpu", dtype=args.dtype)
    engine = Engine(model, tok, EngineConfig(max_batch_size=args.streams, kv_cache_tokens=32768),
                    threads=args.threads)
    if engine.flat_forward is not None:
        engine.flat_forward = labelled("forward", engine.flat_forward)
    engine._schedule = labelled("scheduler", engine._schedule)

    done = threading.Event()
    timings: list[float] = []
    step = engine._step
    prof = profile(activities=[ProfilerActivity.CPU])

    def profiled_step() -> None:
        decoding = (len(engine._running) == args.streams and not engine._waiting
                    and all(s.is_decoding for s in engine._running))
        if not decoding or done.is_set():
            return step()
        if not timings:
            prof.start()
        t0 = time.perf_counter()
        with record_function("engine step"):
            step()
        timings.append(time.perf_counter() - t0)
        if len(timings) == args.steps:
            prof.stop()
            done.set()

    engine._step = profiled_step
    engine.start()

    async def load() -> None:
        req = GenerateRequest(model="m", messages=[ChatMessage(role="user", content=PROMPT)], temperature=0.0,
                              max_new_tokens=args.steps + 64)
        await asyncio.gather(*[engine.generate(req) for _ in range(args.streams)])

    asyncio.run(load())
    engine.shutdown()
    if not done.is_set():
        raise SystemExit("the streams finished before enough pure decode steps were seen; raise --steps")

    per_step = sum(timings) / len(timings)
    print(f"{args.dtype}, {args.streams} streams, {engine.threads.describe()}, {len(timings)} decode steps "
          f"profiled: {1e3 * per_step:.1f} ms per step under the profiler")
    events = [e for e in prof.key_averages() if e.key != "engine step"]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events)
    print("\n| operation | self time per step (ms) | share | calls per step |\n|---|---|---|---|")
    for e in events[: args.rows]:
        print(f"| {e.key} | {e.self_cpu_time_total / 1e3 / len(timings):.2f} | "
              f"{100 * e.self_cpu_time_total / total_us:.1f} % | {e.count / len(timings):.0f} |")
    rest = events[args.rows:]
    print(f"| (the other {len(rest)} operations) | {sum(e.self_cpu_time_total for e in rest) / 1e3 / len(timings):.2f}"
          f" | {100 * sum(e.self_cpu_time_total for e in rest) / total_us:.1f} % | |")


if __name__ == "__main__":
    main()
