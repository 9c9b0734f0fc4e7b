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
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-twin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Plane:
    def __init__(self, root: Path):
        self.root, self.secret = root, secrets.token_urlsafe(24)
        self.env = dict(os.environ, PYTHONPATH=str(REPO), ORCHESTR_SECRET=self.secret)
        ports = [free_port() for _ in range(4)]
        self.controller = f"http://127.0.0.1:{ports[0]}"
        self.api = f"http://127.0.0.1:{ports[1]}"
        self.workers = [f"http://127.0.0.1:{p}" for p in ports[2:]]
        self.argv = {
            "controller": ["orchestr.services.controller", "--port", str(ports[0])],
            "api": ["orchestr.services.openai_api_server", "--port", str(ports[1]),
                    "--controller-address", self.controller],
        }
        for i, p in enumerate(ports[2:]):
            self.argv[f"worker-{i}"] = ["orchestr.services.model_worker", "--port", str(p),
                                        "--worker-address", self.workers[i], "--controller-address",
                                        self.controller, "--model-names", MODEL,
                                        "--limit-worker-concurrency", "16"]
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def start(self, name: str) -> None:
        log = (self.root / f"{name}.log").open("a")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", *self.argv[name]], env=self.env, cwd=REPO,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_health(self, url: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{url} did not become healthy; logs in {self.root}")

    def registered(self) -> set[str]:
        try:
            r = httpx.post(self.controller + "/worker_get_status", headers=self.auth, timeout=2)
            return {w["worker_name"] for w in r.json()["workers"]}
        except (httpx.HTTPError, ValueError):
            return set()

    def up(self) -> None:
        self.start("controller")
        self.wait_health(self.controller)
        for name in ("worker-0", "worker-1", "api"):
            self.start(name)
        for url in (*self.workers, self.api):
            self.wait_health(url)
        while self.registered() != set(self.workers):
            time.sleep(0.2)

    def down(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def chat(http: httpx.AsyncClient, api: str, max_tokens: int, stream: bool) -> tuple[bool, int]:
    """(succeeded, content deltas received): a failed stream tells whether it was mid-answer."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    tokens = 0
    try:
        if not stream:
            r = await http.post(api + "/v1/chat/completions", json=body)
            return r.status_code == 200, int(r.status_code == 200)
        async with http.stream("POST", api + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return False, 0
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    data = json.loads(line[6:])
                    if "error" in data:
                        return False, tokens
                    tokens += sum(bool(c["delta"].get("content")) for c in data.get("choices", []))
        return tokens > 0, tokens
    except httpx.HTTPError:
        return False, tokens


async def worker_kill(plane: Plane, n: int, concurrency: int, max_tokens: int) -> dict:
    sem, done = asyncio.Semaphore(concurrency), 0
    killed_at, dropped_at = 0.0, 0.0
    victim = plane.procs["worker-1"]

    async def watch_drop(http: httpx.AsyncClient) -> None:
        nonlocal dropped_at
        while not dropped_at:
            r = await http.post(plane.controller + "/worker_get_status", headers=plane.auth, timeout=5)
            if plane.workers[1] not in {w["worker_name"] for w in r.json()["workers"]}:
                dropped_at = time.monotonic()
            await asyncio.sleep(0.05)

    async def one(i: int, http: httpx.AsyncClient) -> tuple[bool, int]:
        nonlocal done, killed_at
        async with sem:
            out = await chat(http, plane.api, max_tokens, stream=i % 2 == 0)
        done += 1
        if done == n // 5 and not killed_at:
            victim.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            watchers.append(asyncio.create_task(watch_drop(http)))
        return out

    watchers: list[asyncio.Task] = []
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=300) as http:
        outs = await asyncio.gather(*(one(i, http) for i in range(n)))
        await asyncio.wait_for(asyncio.gather(*watchers), 120)
    elapsed = time.monotonic() - t0
    restart_t = time.monotonic()
    plane.start("worker-1")
    while plane.registered() != set(plane.workers):
        await asyncio.sleep(0.2)
    back = time.monotonic() - restart_t
    failed = [o for o in outs if not o[0]]
    return {"sent": n, "succeeded": n - len(failed), "failed": len(failed),
            "failed_mid_stream": sum(1 for o in failed if o[1] > 0), "seconds": round(elapsed, 1),
            "dead_worker_dropped_after_s": round(dropped_at - killed_at, 2),
            "restarted_worker_registered_after_s": round(back, 1)}


async def controller_kill(plane: Plane, rate: float, duration: float, down_s: float) -> dict:
    outs: list[tuple[bool, int]] = []
    answered = relearned = None
    async with httpx.AsyncClient(timeout=120) as http:
        async def probe():
            outs.append(await chat(http, plane.api, 2, stream=False))

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
    failed = sum(1 for o in outs if not o[0])
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
    plane = Plane(root)
    try:
        plane.up()
        wk = asyncio.run(worker_kill(plane, args.requests, args.concurrency, args.max_tokens))
        print("worker kill:    ", json.dumps(wk))
        ck = asyncio.run(controller_kill(plane, args.rate, args.duration, args.controller_down))
        print("controller kill:", json.dumps(ck))
    finally:
        plane.down()
    print(f"(logs in {root})")


if __name__ == "__main__":
    main()
