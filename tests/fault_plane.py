"""The service plane on real processes, for the fault tests (tests/test_faults.py) and the fault
benchmark (scripts/bench_faults.py): a controller, two twin workers of the embedded model and the
OpenAI API server started directly (``python -m orchestr.services.*``) on loopback with a service
secret (and an API key, when given, from a 0600 file), and a bounded chat load against it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import REPO, free_ports, terminate, wait_healthy

MODEL = "smollm2-twin"


@dataclass
class Plane:
    root: Path  # one log per process: NAME.log
    env: dict[str, str]
    secret: str
    api_key: str | None
    controller: str
    api: str
    workers: list[str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str] | None = None, prefix: list[str] | None = None) -> subprocess.Popen:
        """Start a process (again, with its last argv when none is given); ``prefix`` runs it
        under another program (e.g. ``setpriv`` to drop capabilities)."""
        argv = argv or self.argv[name]
        self.argv[name] = argv
        log = self.root / f"{name}.log"
        proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", *argv], cwd=REPO, env=self.env,
                                stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def wait(self, name: str, url: str) -> None:
        wait_healthy(url + "/health", self.procs[name], self.root / f"{name}.log")

    def registered(self) -> set[str]:
        """The workers the controller lists (none while it does not answer)."""
        try:
            r = httpx.post(self.controller + "/worker_get_status", headers=self.secret_header(), timeout=5)
            return {w["worker_name"] for w in r.json()["workers"]}
        except (httpx.HTTPError, ValueError):
            return set()

    def secret_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def key_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start_web(self, name: str, log_dir: Path, *flags: str, prefix: list[str] | None = None) -> str:
        """A web UI on this plane (greedy by default: its replies can be compared), healthy; its URL."""
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}"
        self.start(name, ["orchestr.services.web", "--port", str(port), "--host", "127.0.0.1",
                          "--controller-address", self.controller, "--log-dir", str(log_dir),
                          "--temperature", "0", *flags], prefix)
        self.wait(name, url)
        return url

    def worker_with_load(self) -> int | None:
        """The index of a worker with requests in flight (None: both idle)."""
        for i, w in enumerate(self.workers):
            try:
                r = httpx.post(w + "/worker_get_status", headers=self.secret_header(), timeout=5)
                if r.json()["queue_length"]:
                    return i
            except (httpx.HTTPError, ValueError):
                pass
        return None

    def restart_worker(self, i: int) -> None:
        """A killed worker started again, healthy and registered."""
        self.start(f"worker-{i}")
        self.wait(f"worker-{i}", self.workers[i])
        deadline = time.monotonic() + 30
        while self.registered() != set(self.workers):
            assert time.monotonic() < deadline, "the restarted worker did not register"
            time.sleep(0.2)

    def stop(self) -> None:
        terminate(self.procs.values())


def start_plane(root: Path, secret: str, api_key: str | None = None, *worker_flags: str) -> Plane:
    """The four processes started, healthy and both workers registered (stopped on failure)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), ORCHESTR_SECRET=secret, ORCHESTR_LOG_LEVEL="INFO")
    if api_key:
        key_file = root / "api-keys"
        key_file.write_text(api_key + "\n")
        key_file.chmod(0o600)
        env["ORCHESTR_API_KEYS_FILE"] = str(key_file)
    cport, aport, w0, w1 = free_ports(4)
    p = Plane(root, env, secret, api_key, f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{aport}",
              [f"http://127.0.0.1:{w0}", f"http://127.0.0.1:{w1}"])
    try:
        p.start("controller", ["orchestr.services.controller", "--port", str(cport)])
        p.wait("controller", p.controller)
        for i, port in enumerate((w0, w1)):
            p.start(f"worker-{i}", ["orchestr.services.model_worker", "--port", str(port),
                                    "--worker-address", p.workers[i], "--controller-address", p.controller,
                                    "--model-names", MODEL, "--limit-worker-concurrency", "16", *worker_flags])
        p.start("api", ["orchestr.services.openai_api_server", "--port", str(aport),
                        "--controller-address", p.controller])
        p.wait("api", p.api)
        for i in range(2):
            p.wait(f"worker-{i}", p.workers[i])
        deadline = time.monotonic() + 30
        while p.registered() != set(p.workers):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not register (logs in {root})")
            time.sleep(0.2)
    except BaseException:
        p.stop()
        raise
    return p


def chat(max_tokens: int = 8, **kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": max_tokens, "temperature": 0, **kw}


@dataclass
class Outcome:
    ok: bool
    tokens: int  # content deltas received before the end (or the failure)
    error: str = ""
    text: str = ""  # the answer (of a stream: its deltas joined)
    usage: dict | None = None  # a stream's when it asked for it (stream_options.include_usage)
    finish: str | None = None


async def request(http: httpx.AsyncClient, url: str, body: dict) -> Outcome:
    """One chat completion; never raises. Counts the tokens a stream delivered before failing."""
    tokens, text, usage, finish = 0, "", None, None
    try:
        if not body.get("stream"):
            r = await http.post(url, json=body)
            if r.status_code != 200:
                return Outcome(False, 0, f"HTTP {r.status_code}: {r.text[:200]}")
            answer = r.json()
            text = answer["choices"][0]["message"]["content"]
            return Outcome(bool(text), 1, text=text, usage=answer.get("usage"),
                           finish=answer["choices"][0]["finish_reason"])
        async with http.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                return Outcome(False, 0, f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    return Outcome(False, tokens, data["error"]["message"], text)
                usage = data.get("usage") or usage
                for choice in data.get("choices", []):
                    tokens += bool(choice["delta"].get("content"))
                    text += choice["delta"].get("content") or ""
                    finish = choice.get("finish_reason") or finish
        return Outcome(tokens > 0, tokens, text=text, usage=usage, finish=finish)
    except (httpx.HTTPError, ValueError) as e:
        return Outcome(False, tokens, repr(e), text)


async def load(plane: Plane, bodies: list[dict], concurrency: int,
               during: Callable[[int, httpx.AsyncClient], Awaitable[None]] | None = None,
               timeout: float = 120) -> list[Outcome]:
    """Send ``bodies`` with ``concurrency`` in flight; ``during(done_count, client)`` runs as
    answers come (to kill something after so many)."""
    sem = asyncio.Semaphore(concurrency)
    done = 0
    async with httpx.AsyncClient(timeout=timeout, headers=plane.key_header()) as http:
        async def one(body: dict) -> Outcome:
            nonlocal done
            async with sem:
                out = await request(http, plane.api + "/v1/chat/completions", body)
            done += 1
            if during is not None:
                await during(done, http)
            return out

        return await asyncio.gather(*(one(b) for b in bodies))
