#!/usr/bin/env python
"""Fault benchmark of the service plane: how many requests survive a worker kill and a
controller kill, and how long recovery takes.

Starts a controller, two twin workers of the embedded model and the OpenAI API server on free
loopback ports (with a generated service secret), then:

1. worker kill: REQUESTS chat requests (half streaming), CONCURRENCY in flight; one twin is
   killed with SIGKILL after a fifth of them answered. Prints sent / succeeded / failed (and how
   many failures had already streamed tokens), the time until the controller dropped the dead
   worker, and the time a restarted worker takes to load and register.
2. controller kill: a steady prober (RATE requests/s, non-streaming) for DURATION s; the
   controller is killed with SIGKILL after 3 s and restarted DOWN s later. Prints sent /
   succeeded / failed and the time from the controller answering again until every worker
   re-registered.

Usage: python scripts/bench_faults.py [--requests 100] [--concurrency 16] [--max-tokens 24]
A benchmark, not a test: figures depend on the machine (and on whoever else uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the plane and its load, shared with tests/test_faults.py

from tests.fault_plane import Outcome, Plane, chat, load, request, start_plane  # noqa: E402


async def worker_kill(plane: Plane, n: int, concurrency: int, max_tokens: int) -> dict:
    killed_at, dropped_at = 0.0, 0.0
    victim = plane.procs["worker-1"]
    watchers: list[asyncio.Task] = []

    async def watch_drop(http: httpx.AsyncClient) -> None:
        nonlocal dropped_at
        while not dropped_at:
            r = await http.post(plane.controller + "/worker_get_status", headers=plane.secret_header(), timeout=5)
            if plane.workers[1] not in {w["worker_name"] for w in r.json()["workers"]}:
                dropped_at = time.monotonic()
            await asyncio.sleep(0.05)

    async def during(done: int, http: httpx.AsyncClient) -> None:
        nonlocal killed_at
        if done == n // 5 and not killed_at:
            victim.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            watchers.append(asyncio.create_task(watch_drop(http)))

    t0 = time.monotonic()
    outs = await load(plane, [chat(max_tokens, stream=i % 2 == 0) for i in range(n)], concurrency, during,
                      timeout=300)
    await asyncio.wait_for(asyncio.gather(*watchers), 120)
    elapsed = time.monotonic() - t0
    restart_t = time.monotonic()
    plane.start("worker-1")
    while plane.registered() != set(plane.workers):
        await asyncio.sleep(0.2)
    back = time.monotonic() - restart_t
    failed = [o for o in outs if not o.ok]
    return {"sent": n, "succeeded": n - len(failed), "failed": len(failed),
            "failed_mid_stream": sum(1 for o in failed if o.tokens > 0), "seconds": round(elapsed, 1),
            "dead_worker_dropped_after_s": round(dropped_at - killed_at, 2),
            "restarted_worker_registered_after_s": round(back, 1)}


async def controller_kill(plane: Plane, rate: float, duration: float, down_s: float) -> dict:
    outs: list[Outcome] = []
    answered = relearned = None
    async with httpx.AsyncClient(timeout=120, headers=plane.key_header()) as http:
        async def probe():
            outs.append(await request(http, plane.api + "/v1/chat/completions", chat(2)))

        tasks, t0, killed, restarted = [], time.monotonic(), False, False
        while time.monotonic() - t0 < duration:
            tasks.append(asyncio.create_task(probe()))
            now = time.monotonic() - t0
            if now > 3 and not killed:
                plane.procs["controller"].send_signal(signal.SIGKILL)
                killed = True
            if now > 3 + down_s and not restarted:
                plane.start("controller")
                restarted = True
            if restarted and answered is None:
                try:
                    if (await http.get(plane.controller + "/health", timeout=0.2)).status_code == 200:
                        answered = time.monotonic()
                except httpx.HTTPError:
                    pass
            if answered is not None and relearned is None and plane.registered() == set(plane.workers):
                relearned = time.monotonic() - answered
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    failed = sum(1 for o in outs if not o.ok)
    return {"sent": len(outs), "succeeded": len(outs) - failed, "failed": failed,
            "controller_down_s": down_s,
            "workers_re_registered_after_s": None if relearned is None else round(relearned, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--rate", type=float, default=2.0, help="prober requests per second")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of probing")
    ap.add_argument("--controller-down", type=float, default=4.0, help="seconds the controller stays dead")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="orchestr-faults-"))
    plane = start_plane(root, secrets.token_urlsafe(24))
    try:
        wk = asyncio.run(worker_kill(plane, args.requests, args.concurrency, args.max_tokens))
        print("worker kill:    ", json.dumps(wk))
        ck = asyncio.run(controller_kill(plane, args.rate, args.duration, args.controller_down))
        print("controller kill:", json.dumps(ck))
    finally:
        plane.stop()
    print(f"(logs in {root})")


if __name__ == "__main__":
    main()
