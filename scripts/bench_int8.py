"""``load_8bit`` on CPU against fp32: the real model worker's resident memory and its throughput
at c=16, one worker at a time (fp32 first, then int8), through the worker's HTTP endpoint.
Figures are printed, never asserted: run it on a quiet machine and read the ratios.

    python scripts/bench_int8.py                         # c=16, 32 requests, 128 tokens each
    python scripts/bench_int8.py --in-process            # also the engine alone: ms per decode step

RSS is the worker's after warm-up and the measured run (``VmRSS``; the peak is printed too).
Both workers run the same engine settings (KV-cache size, batch size, threads), so the KV
pool and the libraries weigh the same in both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from orchestr.benchmark.cli import load_counter
from orchestr.benchmark.runner import run_level
from orchestr.benchmark.servers import free_port

MODEL = "embedded://SmolLM2-135M-Instruct"
# int8 with fp32 activations (like for like) and with bf16 ones (what `--load-8bit` runs with the
# default `dtype: auto` on a CPU with AVX-512 BF16: activations and KV cache in bf16)
VARIANTS = {"fp32": ["--dtype", "float32"], "int8": ["--dtype", "float32", "--load-8bit"],
            "int8-bf16": ["--dtype", "bfloat16", "--load-8bit"]}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"worker exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"worker not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def measure_worker(name: str, args: argparse.Namespace, count, workdir: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / f"{name}.log"
    cmd = [sys.executable, "-m", "orchestr.services.model_worker", "--model-path", args.model_path,
           "--model-names", name, "--no-register", "--host", "127.0.0.1", "--port", str(port),
           "--kv-cache-tokens", str(args.kv_cache_tokens), *VARIANTS[name]]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, proc, log)
        common = dict(protocol="worker", base_url=url, model=name, max_tokens=args.max_tokens, count_tokens=count,
                      progress=False)
        run_level(concurrency=4, num_requests=4, **common)  # warm-up: first-call costs out of the figures
        result = run_level(concurrency=args.concurrency, num_requests=args.requests, rss_pids={name: proc.pid},
                           **common)
        if result.failed:
            sys.exit(f"{name}: {result.failed} requests failed: {result.errors}")
        return {"tok_s": result.output_tok_s, "rss_mb": rss_mb(proc.pid), "peak_rss_mb": result.peak_rss_mb[name],
                "tokens": result.output_tokens, "seconds": result.duration_s, "loadavg": result.loadavg}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_engine(name: str, args: argparse.Namespace) -> dict:
    """The engine alone, no HTTP: ``concurrency`` greedy requests decoded together; ms per step
    taken as wall time / decode steps of the longest request (prefill included, so an upper bound)."""
    from orchestr.config.serving import EngineConfig
    from orchestr.engine.engine import Engine
    from orchestr.engine.loader import load_model
    from orchestr.protocol import ChatMessage, GenerateRequest

    model, tok = load_model(args.model_path, device="cpu", dtype="float32", load_8bit=name == "int8")
    engine = Engine(model, tok, EngineConfig(kv_cache_tokens=args.kv_cache_tokens)).start()
    try:
        def req(i: int) -> GenerateRequest:
            text = f"Write a long story about a dragon number {i} who learns to bake bread."
            return GenerateRequest(model="m", messages=[ChatMessage(role="user", content=text)], temperature=0.0,
                                   max_new_tokens=args.max_tokens)

        async def together():
            return await asyncio.gather(*[engine.generate(req(i)) for i in range(args.concurrency)])

        asyncio.run(together())  # warm-up
        t0 = time.perf_counter()
        results = asyncio.run(together())
        wall = time.perf_counter() - t0
    finally:
        engine.shutdown()
    steps = max(r.usage.completion_tokens for r in results)
    tokens = sum(r.usage.completion_tokens for r in results)
    return {"ms_per_step": round(1000 * wall / steps, 1), "tok_s": round(tokens / wall, 1),
            "sample": results[0].text[:80]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=MODEL)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--kv-cache-tokens", type=int, default=32768, help="the same for both workers")
    ap.add_argument("--in-process", action="store_true", help="also time the engine alone (no HTTP)")
    args = ap.parse_args()
    # the workers want a service secret; this process's client sends the same one
    os.environ.setdefault("ORCHESTR_SECRET", secrets.token_urlsafe(24))
    count = load_counter(args.model_path)

    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for name in VARIANTS:
            figures[name] = measure_worker(name, args, count, Path(tmp))
            print(f"{name}: {figures[name]}", flush=True)
    fp32 = figures["fp32"]
    print(f"\nworker, c={args.concurrency}, {args.requests} requests x {args.max_tokens} tokens, "
          f"KV cache {args.kv_cache_tokens} tokens:")
    for name in VARIANTS:
        f = figures[name]
        print(f"  {name:9s} RSS {f['rss_mb']:.0f} MB (peak {f['peak_rss_mb']:.0f}), ratio to fp32 "
              f"{f['rss_mb'] / fp32['rss_mb']:.2f}; {f['tok_s']:.1f} tok/s, ratio {f['tok_s'] / fp32['tok_s']:.2f}")
    if args.in_process:
        eng = {name: measure_engine(name, args) for name in ("fp32", "int8")}
        print(f"engine alone, {args.concurrency} streams: ms per step fp32 {eng['fp32']['ms_per_step']}  "
              f"int8 {eng['int8']['ms_per_step']}  (tok/s {eng['fp32']['tok_s']} / {eng['int8']['tok_s']})")
        for name, e in eng.items():
            print(f"  {name} greedy: {e['sample']!r}")


if __name__ == "__main__":
    main()
