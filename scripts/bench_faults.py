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

3. the web UI's backend (``ServingClient``, the code behind every chat of the page, on the same
   router as the API): WEB_CHATS chats, WEB_CONCURRENCY in flight, one twin killed after a fifth
   of them; then a controller kill while it chats. Prints sent / succeeded / failed.
4. the cost of a continuation: a single greedy stream of CONT_TOKENS tokens whose worker is
   killed in the middle, several times: the gap at the crash point (last token before the kill
   to the first after it) beside the median gap between tokens, and whether the text equals the
   fault-free one; then the output tokens per second of the worker-kill load (continuations
   included) beside the same load without a fault.

Usage: python scripts/bench_faults.py [--requests 100] [--concurrency 16] [--max-tokens 24]
A benchmark, not a test: figures depend on the machine (and on whoever else uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the plane and its load, shared with tests/test_faults.py

from tests.fault_plane import MODEL, Outcome, Plane, chat, load, request, start_plane  # noqa: E402


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


async def web_kill(plane: Plane, n: int, concurrency: int, max_tokens: int) -> dict:
    """Chats through the web UI's backend while a twin is killed, then while the controller is."""
    from orchestr.protocol import ChatMessage
    from orchestr.services.web.client import BackendError, ServingClient

    plane.wait("controller", plane.controller)  # back from the controller kill before
    while plane.registered() != set(plane.workers):
        await asyncio.sleep(0.2)
    client = ServingClient(plane.controller)
    sem = asyncio.Semaphore(concurrency)
    done = 0
    failures: list[str] = []

    async def one(on_done) -> None:
        nonlocal done
        async with sem:
            try:
                text = "".join([d async for d in client.stream_chat(
                    MODEL, [ChatMessage(role="user", content="Tell me about the sea.")], 0.0, 1.0, max_tokens)])
                if not text:
                    failures.append("empty")
            except BackendError as e:
                failures.append(str(e))
        done += 1
        on_done()

    victim = plane.procs["worker-1"]

    def kill_twin() -> None:
        if done == n // 5 and victim.poll() is None:
            victim.send_signal(signal.SIGKILL)

    try:
        await asyncio.gather(*(one(kill_twin) for _ in range(n)))
        worker = {"sent": n, "succeeded": n - len(failures), "failed": len(failures)}
        plane.start("worker-1")
        while plane.registered() != set(plane.workers):
            await asyncio.sleep(0.2)
        failures.clear()
        done = 0
        ctl = plane.procs["controller"]

        def kill_controller() -> None:
            if done == n // 5 and ctl.poll() is None:
                ctl.send_signal(signal.SIGKILL)

        await asyncio.gather(*(one(kill_controller) for _ in range(n)))
        controller = {"sent": n, "succeeded": n - len(failures), "failed": len(failures)}
        plane.start("controller")
        plane.wait("controller", plane.controller)
        while plane.registered() != set(plane.workers):
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
    return {"worker_kill": worker, "controller_kill": controller}


async def one_stream(http: httpx.AsyncClient, plane: Plane, max_tokens: int, kill_after: int | None
                     ) -> tuple[str, list[float], int | None, int | None]:
    """A greedy stream: its text, the arrival time of each delta, the delta count at the kill and
    the killed worker's index."""
    body = {**chat(max_tokens), "stream": True, "messages": [{"role": "user", "content": "Tell me about the sea."}]}
    text, times, crash, killed = "", [], None, None
    async with http.stream("POST", plane.api + "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                if choice["delta"].get("content"):
                    text += choice["delta"]["content"]
                    times.append(time.monotonic())
                    if kill_after is not None and len(times) == kill_after and crash is None:
                        busy = plane.worker_with_load()
                        if busy is not None:
                            plane.procs[f"worker-{busy}"].send_signal(signal.SIGKILL)
                            crash, killed = len(times), busy
    return text, times, crash, killed


async def continuation_cost(plane: Plane, trials: int, max_tokens: int, n: int, concurrency: int,
                            load_tokens: int) -> dict:
    gaps_at_crash, median_gaps, equal = [], [], 0
    async with httpx.AsyncClient(timeout=300, headers=plane.key_header()) as http:
        reference, _, _, _ = await one_stream(http, plane, max_tokens, None)
        for _ in range(trials):
            text, times, crash, killed = await one_stream(http, plane, max_tokens, max_tokens // 2)
            gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
            if crash is not None and crash < len(times):
                gaps_at_crash.append(times[crash] - times[crash - 1])
                median_gaps.append(statistics.median(gaps))
            equal += text == reference
            if killed is not None:
                plane.restart_worker(killed)
    bodies = [chat(load_tokens, stream=i % 2 == 0) for i in range(n)]
    await load(plane, bodies[:concurrency], concurrency, timeout=300)  # the restarted worker warms up
    t0 = time.monotonic()
    clean = await load(plane, bodies, concurrency, timeout=300)
    clean_s = time.monotonic() - t0
    victim = plane.procs["worker-1"]

    async def during(done: int, _http) -> None:
        if done == n // 5 and victim.poll() is None:
            victim.send_signal(signal.SIGKILL)

    t0 = time.monotonic()
    faulted = await load(plane, bodies, concurrency, during, timeout=300)
    faulted_s = time.monotonic() - t0
    plane.restart_worker(1)
    tokens = n * load_tokens  # every answer runs its budget ("Tell me about the sea." is long)
    return {"trials": trials, "greedy_text_equal": f"{equal}/{trials}",
            "gap_at_crash_ms": [round(g * 1000) for g in gaps_at_crash],
            "median_gap_between_tokens_ms": [round(g * 1000) for g in median_gaps],
            "fault_free_tokens_per_s": round(tokens / clean_s, 1),
            "with_kill_and_continuations_tokens_per_s": round(tokens / faulted_s, 1),
            "failed_fault_free": sum(not o.ok for o in clean), "failed_with_kill": sum(not o.ok for o in faulted)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--rate", type=float, default=2.0, help="prober requests per second")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of probing")
    ap.add_argument("--controller-down", type=float, default=4.0, help="seconds the controller stays dead")
    ap.add_argument("--web-chats", type=int, default=60)
    ap.add_argument("--web-concurrency", type=int, default=8)
    ap.add_argument("--cont-trials", type=int, default=3, help="single streams killed mid-answer")
    ap.add_argument("--cont-tokens", type=int, default=64, help="tokens of each such stream")
    ap.add_argument("--dtype", default="float32", help="the workers' dtype (bf16 may flip greedy near ties)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="orchestr-faults-"))
    plane = start_plane(root, secrets.token_urlsafe(24), None, "--dtype", args.dtype)
    try:
        wk = asyncio.run(worker_kill(plane, args.requests, args.concurrency, args.max_tokens))
        print("worker kill:    ", json.dumps(wk))
        ck = asyncio.run(controller_kill(plane, args.rate, args.duration, args.controller_down))
        print("controller kill:", json.dumps(ck))
        web = asyncio.run(web_kill(plane, args.web_chats, args.web_concurrency, args.max_tokens))
        print("web UI:         ", json.dumps(web))
        cc = asyncio.run(continuation_cost(plane, args.cont_trials, args.cont_tokens, args.requests,
                                           args.concurrency, args.max_tokens))
        print("continuation:   ", json.dumps(cc))
    finally:
        plane.stop()
    print(f"(logs in {root})")


if __name__ == "__main__":
    main()
