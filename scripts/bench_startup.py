"""Time from `orchestr launch` to the first answer, per backend, cold and warm.

cold: an empty orchestr cache (ORCHESTR_CACHE_DIR in a temporary folder), so the GGUF ->
safetensors conversion, the OpenVINO IR export and the C kernels' build are included; warm: a
second launch on the same cache. Each figure is one launch (detached, web UI off, free ports)
until the first greedy chat answer through the API server; the deployment is stopped after it.
vLLM's own compile cache (~/.cache/vllm) is not cleared: its cold figure is orchestr's part only.

    .venv/bin/python scripts/bench_startup.py                       # hf and openvino (+ vllm if .venv-vllm exists)
    .venv/bin/python scripts/bench_startup.py --backends openvino --warm-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestr.benchmark.servers import BenchError, BenchOptions, OrchestrServer  # noqa: E402

BACKENDS = {
    "hf": "model=smollm2-135m",
    "openvino": "model=smollm2-135m-openvino",
    "vllm": "cluster=local_vllm model=smollm2-135m-vllm",
}


def first_answer(api_base: str, timeout_s: float = 600) -> str:
    import httpx

    body = {"model": "smollm2-135m", "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = httpx.post(f"{api_base}/chat/completions", json=body, timeout=120)
            if r.status_code == 200:
                return r.json()["choices"][0]["message"]["content"]
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"no answer from {api_base} within {timeout_s:.0f} s")
        time.sleep(0.2)


def time_launch(backend: str, cache_dir: Path) -> tuple[float, str]:
    os.environ["ORCHESTR_CACHE_DIR"] = str(cache_dir)
    server = OrchestrServer(f"startup-{backend}", "orchestr", BACKENDS[backend],
                            BenchOptions(log=lambda _m: None, start_timeout_s=1800))
    t0 = time.perf_counter()
    try:
        api = server.start()[0].base_url
        answer = first_answer(api)
        return time.perf_counter() - t0, answer
    finally:
        server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default=None, help="comma-separated: hf,openvino,vllm (default: those set up here)")
    p.add_argument("--warm-only", action="store_true", help="skip the cold launch (use the normal cache)")
    p.add_argument("--output", "-o", type=Path, help="write the figures as JSON here")
    args = p.parse_args()
    backends = args.backends.split(",") if args.backends else [
        b for b in BACKENDS if b != "vllm" or (REPO / ".venv-vllm" / "bin" / "python").is_file()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        print(f"bench_startup: unknown backend(s) {unknown} ({', '.join(BACKENDS)})", file=sys.stderr)
        return 2
    os.chdir(REPO)  # cluster=local_vllm's interpreter path is relative to the repository
    figures: dict[str, dict[str, float]] = {}
    user_cache = Path(os.environ.get("ORCHESTR_CACHE_DIR") or "~/.cache/orchestr").expanduser()
    for backend in backends:
        figures[backend] = {}
        with tempfile.TemporaryDirectory(prefix="orchestr-cold-cache-") as tmp:
            runs = [("warm", user_cache)] if args.warm_only else [("cold", Path(tmp)), ("warm", Path(tmp))]
            for label, cache in runs:
                try:
                    seconds, answer = time_launch(backend, cache)
                except BenchError as e:
                    print(f"{backend:9s} {label}: failed: {e}", flush=True)
                    continue
                figures[backend][label] = round(seconds, 1)
                print(f"{backend:9s} {label}: {seconds:6.1f} s to the first answer ({answer.strip()[:40]!r})",
                      flush=True)
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
