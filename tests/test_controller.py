"""The controller as a real process, with small real HTTP workers registering and heart-beating.

The workers here are genuine HTTP servers speaking the worker side of the controller protocol
(`/worker_get_status`, register, heartbeat, re-register on ``exist=false``); they just do not load
a model, which the controller never touches. Run this file as a script to start one:
``python tests/test_controller.py --stub-worker --port P --controller URL --model NAME``.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, terminate, wait_healthy

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- process helpers


def wait_until(pred, timeout: float, interval: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    return pred()


class Procs:
    """Processes a test started; all stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str]) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO), ORCHESTR_LOG_LEVEL="WARNING")
        p = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env)
        self.procs.append(p)
        return p

    def controller(self, port: int, *extra: str) -> tuple[str, subprocess.Popen]:
        p = self.start(
            ["-m", "orchestr.services.controller", "--host", "127.0.0.1", "--port", str(port), *extra]
        )
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url + "/health", p, timeout=30)
        return url, p

    def worker(self, controller: str, model: str, *extra: str) -> tuple[str, subprocess.Popen]:
        port = free_port()
        p = self.start(
            [
                __file__,
                "--stub-worker",
                "--port",
                str(port),
                "--controller",
                controller,
                "--model",
                model,
                *extra,
            ]
        )
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url + "/health", p, timeout=30)
        return url, p

    def stop_all(self) -> None:
        terminate(self.procs, timeout=10)


@pytest.fixture
def procs():
    ps = Procs()
    yield ps
    ps.stop_all()


_http = httpx.Client(timeout=10.0)  # keep-alive: hundreds of dispatch calls in the lottery test


def post(url: str, body: dict | None = None) -> dict:
    r = _http.post(url, json=body or {})
    r.raise_for_status()
    return r.json()


def models(controller: str) -> list[str]:
    return post(controller + "/list_models")["models"]


def workers(controller: str) -> list[str]:
    return [w["worker_name"] for w in post(controller + "/worker_get_status")["workers"]]


def registered(controller: str, url: str) -> bool:
    return url in workers(controller)


# --------------------------------------------------------------------------- tests


def test_registration_listing_and_status(procs):
    ctl, _ = procs.controller(free_port())
    a1, _ = procs.worker(ctl, "model-a", "--speed", "2", "--queue-length", "3")
    a2, _ = procs.worker(ctl, "model-a")
    b, _ = procs.worker(ctl, "model-b")
    assert wait_until(lambda: len(workers(ctl)) == 3, 10)

    assert models(ctl) == ["model-a", "model-b"]
    status = post(ctl + "/worker_get_status")
    assert status["model_names"] == ["model-a", "model-b"]
    assert status["speed"] == 4 and status["queue_length"] == 3
    by_name = {w["worker_name"]: w for w in status["workers"]}
    assert by_name[a1]["speed"] == 2 and by_name[a1]["queue_length"] == 3  # fetched from the worker

    assert post(ctl + "/get_worker_address", {"model": "model-b"})["address"] == b
    assert post(ctl + "/get_worker_address", {"model": "nope"})["address"] == ""
    assert post(ctl + "/receive_heart_beat", {"worker_name": "http://127.0.0.1:1", "queue_length": 0}) == {
        "exist": False
    }
    # A worker that cannot be reached is not registered.
    r = _http.post(ctl + "/register_worker", json={"worker_name": f"http://127.0.0.1:{free_port()}"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "registration_refused"
    assert len(workers(ctl)) == 3
    # Registration with the status given needs no call back to the worker.
    post(
        ctl + "/register_worker",
        {
            "worker_name": "http://10.0.0.1:1",
            "check_heart_beat": False,
            "worker_status": {"model_names": ["m-c"]},
        },
    )
    assert models(ctl) == ["m-c", "model-a", "model-b"]
    post(
        ctl + "/register_worker",
        {"worker_name": "http://10.0.0.2:1", "check_heart_beat": False, "multimodal": True,
         "worker_status": {"model_names": ["m-vision"]}},
    )  # fmt: skip
    assert post(ctl + "/list_multimodal_models")["models"] == ["m-vision"]
    assert post(ctl + "/list_language_models")["models"] == ["m-c", "model-a", "model-b"]


def test_shortest_queue_prefers_short_queues_and_spreads_ties(procs):
    ctl, _ = procs.controller(free_port(), "--dispatch-method", "shortest_queue")
    busy, _ = procs.worker(ctl, "m", "--queue-length", "100")
    idle, _ = procs.worker(ctl, "m", "--queue-length", "0")
    other, _ = procs.worker(ctl, "m", "--queue-length", "0")
    assert wait_until(lambda: len(workers(ctl)) == 3, 10)

    picks = collections.Counter(
        post(ctl + "/get_worker_address", {"model": "m"})["address"] for _ in range(60)
    )
    # Each dispatch counts against the chosen worker until its next heartbeat, so the two idle
    # workers take turns and the busy one (queue 100) gets nothing.
    assert picks[busy] == 0
    assert abs(picks[idle] - picks[other]) <= 1, picks


def test_shortest_queue_weighs_queue_by_speed(procs):
    ctl, _ = procs.controller(free_port())
    fast, _ = procs.worker(ctl, "m", "--queue-length", "4", "--speed", "4")  # 4/4 = 1.0
    slow, _ = procs.worker(ctl, "m", "--queue-length", "2", "--speed", "1")  # 2/1 = 2.0
    assert wait_until(lambda: len(workers(ctl)) == 2, 10)
    assert post(ctl + "/get_worker_address", {"model": "m"})["address"] == fast


def test_lottery_follows_speed(procs):
    ctl, _ = procs.controller(free_port(), "--dispatch-method", "lottery")
    slow, _ = procs.worker(ctl, "m", "--speed", "1")
    fast, _ = procs.worker(ctl, "m", "--speed", "3", "--queue-length", "50")
    assert wait_until(lambda: len(workers(ctl)) == 2, 10)

    n = 600
    picks = collections.Counter(
        post(ctl + "/get_worker_address", {"model": "m"})["address"] for _ in range(n)
    )
    # Expected 150 / 450; binomial sd ~10.6, so +-60 is far outside chance. Queue length is ignored.
    assert abs(picks[slow] - n / 4) < 60, picks
    assert picks[slow] + picks[fast] == n


def test_silent_worker_expires_while_heart_beating_one_stays(procs):
    ctl, _ = procs.controller(free_port(), "--heart-beat-expiration", "2")
    alive, _ = procs.worker(ctl, "m", "--heart-beat-interval", "0.5")
    silent, _ = procs.worker(ctl, "m", "--heart-beat-interval", "0")
    assert wait_until(lambda: len(workers(ctl)) == 2, 10)

    assert wait_until(lambda: not registered(ctl, silent), 8), "silent worker was not dropped"
    assert registered(ctl, alive)
    time.sleep(2.5)  # more than one expiration period: the heart-beating worker is still there
    assert workers(ctl) == [alive]


def test_worker_that_dies_is_dropped(procs):
    ctl, _ = procs.controller(free_port(), "--heart-beat-expiration", "2")
    survivor, _ = procs.worker(ctl, "m", "--heart-beat-interval", "0.5")
    victim, vproc = procs.worker(ctl, "m", "--heart-beat-interval", "0.5")
    assert wait_until(lambda: len(workers(ctl)) == 2, 10)

    vproc.kill()
    vproc.wait()
    assert wait_until(lambda: workers(ctl) == [survivor], 8), workers(ctl)
    addrs = {post(ctl + "/get_worker_address", {"model": "m"})["address"] for _ in range(10)}
    assert addrs == {survivor}


def test_refresh_all_workers_drops_dead_ones_at_once(procs):
    ctl, _ = procs.controller(free_port())  # default expiration: 90 s
    survivor, _ = procs.worker(ctl, "m")
    victim, vproc = procs.worker(ctl, "m2")
    assert wait_until(lambda: len(workers(ctl)) == 2, 10)
    vproc.kill()
    vproc.wait()
    post(ctl + "/refresh_all_workers")
    assert workers(ctl) == [survivor]
    assert models(ctl) == ["m"]


def test_workers_register_again_after_controller_restart(procs):
    port = free_port()
    ctl, cproc = procs.controller(port)
    w1, _ = procs.worker(ctl, "m", "--heart-beat-interval", "0.5")
    w2, _ = procs.worker(ctl, "m2", "--heart-beat-interval", "0.5")
    assert wait_until(lambda: len(workers(ctl)) == 2, 10)

    cproc.send_signal(signal.SIGTERM)
    cproc.wait(10)
    ctl2, _ = procs.controller(port)
    # The new controller knows nobody; heartbeats get exist=false and the workers re-register.
    assert wait_until(lambda: sorted(workers(ctl2)) == sorted([w1, w2]), 10), workers(ctl2)
    assert models(ctl2) == ["m", "m2"]


def test_bad_flags_fail_clearly():
    r = subprocess.run(
        [sys.executable, "-m", "orchestr.services.controller", "--dispatch-method", "round_robin"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "invalid choice" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- the stub worker


def run_stub_worker(argv: list[str]) -> None:
    """A real HTTP worker without a model: status, registration, heartbeats, re-registration."""
    import uvicorn
    from fastapi import FastAPI

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--controller", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--speed", type=int, default=1)
    ap.add_argument("--queue-length", type=int, default=0)
    ap.add_argument("--heart-beat-interval", type=float, default=0.0, help="0: never")
    args = ap.parse_args(argv)
    me = f"http://127.0.0.1:{args.port}"
    status = {"model_names": [args.model], "speed": args.speed, "queue_length": args.queue_length}

    def register() -> bool:
        try:
            r = httpx.post(args.controller + "/register_worker", json={"worker_name": me}, timeout=5)
            return bool(r.json().get("ok"))
        except httpx.HTTPError:
            return False

    def background() -> None:
        # The controller calls back /worker_get_status, so registration succeeds once we listen.
        while not register():
            time.sleep(0.1)
        while args.heart_beat_interval > 0:
            time.sleep(args.heart_beat_interval)
            try:
                r = httpx.post(
                    args.controller + "/receive_heart_beat",
                    json={"worker_name": me, "queue_length": args.queue_length},
                    timeout=5,
                )
                if not r.json()["exist"]:
                    register()
            except httpx.HTTPError:
                pass  # controller down: keep trying

    app = FastAPI()

    @app.post("/worker_get_status")
    def worker_get_status() -> dict:
        return status

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    threading.Thread(target=background, daemon=True).start()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__" and "--stub-worker" in sys.argv:
    run_stub_worker([a for a in sys.argv[1:] if a != "--stub-worker"])
