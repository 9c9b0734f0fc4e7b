"""The transformers model worker as a real process, driven over HTTP (httpx)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import free_port, terminate, wait_healthy

MODEL = "smollm2-test"


def _start(args: list[str], log_path) -> subprocess.Popen:
    env = dict(os.environ, ORCHESTR_LOG_LEVEL="INFO")
    return subprocess.Popen([sys.executable, "-m", *args], stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = _start(["orchestr.services.model_worker", "--port", str(port), "--host", "127.0.0.1", "--no-register",
                   "--model-names", f"{MODEL},alias", "--dtype", "float32", "--limit-worker-concurrency", "2",
                   "--kv-cache-tokens", "8192"], log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, timeout=180)
        yield f"http://127.0.0.1:{port}"
    finally:
        terminate([proc])


def _chat(text: str, **kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "temperature": 0, **kw}


def test_status_details_and_token_count(worker):
    status = httpx.post(f"{worker}/worker_get_status").json()
    assert status["model_names"] == [MODEL, "alias"] and status["queue_length"] == 0
    details = httpx.post(f"{worker}/model_details", json={"model": "alias"}).json()
    assert details["model"] == "alias" and details["context_length"] == 8192 and details["dtype"] == "float32"
    count = httpx.post(f"{worker}/count_token", json={"model": MODEL, "prompt": "Hello there, world"}).json()
    assert 2 <= count["count"] <= 8 and count["context_length"] == 8192


def test_generate_and_stream(worker):
    res = httpx.post(f"{worker}/worker_generate", json=_chat("What is the capital of France?", max_new_tokens=20),
                     timeout=120).json()
    assert "Paris" in res["text"] and res["finish_reason"] in ("stop", "length")
    assert res["usage"]["completion_tokens"] > 0 and res["usage"]["prompt_tokens"] > 5

    chunks = []
    with httpx.stream("POST", f"{worker}/worker_generate_stream",
                      json=_chat("What is the capital of France?", max_new_tokens=20), timeout=120) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        for line in r.iter_lines():
            if line:
                chunks.append(json.loads(line))
    assert len(chunks) > 3
    assert "".join(c["text"] for c in chunks) == res["text"]
    assert chunks[-1]["finish_reason"] == res["finish_reason"]


def test_stop_strings_over_http(worker):
    full = httpx.post(f"{worker}/worker_generate", json=_chat("What is the capital of France?", max_new_tokens=20),
                      timeout=120).json()["text"]
    res = httpx.post(f"{worker}/worker_generate",
                     json=_chat("What is the capital of France?", max_new_tokens=20, stop=["Paris"]),
                     timeout=120).json()
    assert res["text"] == full[: full.index("Paris")] and res["finish_reason"] == "stop"


def test_bad_requests(worker):
    res = httpx.post(f"{worker}/worker_generate", json={"model": "other", "prompt": "hi"}, timeout=30).json()
    assert res["finish_reason"] == "error" and res["error_code"] == 40301
    r = httpx.post(f"{worker}/worker_generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    # Out-of-range sampling values are refused by the request's schema, naming the field.
    for bad in ({"top_p": 0}, {"repetition_penalty": 1e-40}, {"seed": 2**64}, {"temperature": 1e9}):
        r = httpx.post(f"{worker}/worker_generate", json=_chat("hi", **bad), timeout=30)
        assert r.status_code == 422 and next(iter(bad)) in r.text, (bad, r.text)
    r = httpx.post(f"{worker}/count_token",
                   json={"model": MODEL, "messages": [{"role": "assistant", "content": "x"},
                                                      {"role": "system", "content": "late system"}]})
    assert r.status_code in (200, 400)


def test_embeddings(worker):
    res = httpx.post(f"{worker}/worker_get_embeddings", json={"model": MODEL, "input": ["a cat", "a dog"]},
                     timeout=60).json()
    assert len(res["embedding"]) == 2 and res["token_num"] >= 4
    assert abs(sum(x * x for x in res["embedding"][0]) - 1) < 1e-3


def test_disconnect_frees_slot_and_limit_counts_waiting(worker):
    long_req = _chat("Write a very long story about a lighthouse keeper.", max_new_tokens=400)
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", f"{worker}/worker_generate_stream", json=long_req) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i == 2:
                    break
        deadline = time.monotonic() + 10
        while client.post(f"{worker}/worker_get_status").json()["queue_length"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.post(f"{worker}/worker_get_status").json()["queue_length"] == 0

    # limit is 2: three open streams -> queue length 3 (2 running + 1 waiting)
    clients = [httpx.Client(timeout=120) for _ in range(3)]
    streams, lines = [], []
    try:
        for c in clients:
            cm = c.stream("POST", f"{worker}/worker_generate_stream", json=long_req)
            streams.append(cm)
            # keep the line iterators alive: a dropped one closes its response (a disconnect)
            lines.append(cm.__enter__().iter_lines())
        for it in lines[:2]:
            assert json.loads(next(it))["text"]  # the first two run
        time.sleep(0.5)
        assert httpx.post(f"{worker}/worker_get_status").json()["queue_length"] == 3
    finally:
        for cm in streams:
            cm.__exit__(None, None, None)
        for c in clients:
            c.close()
    deadline = time.monotonic() + 10
    while httpx.post(f"{worker}/worker_get_status").json()["queue_length"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.post(f"{worker}/worker_get_status").json()["queue_length"] == 0


@pytest.mark.slow
def test_registers_late_and_again_after_controller_restart(tmp_path):
    """Controller down at worker start: the worker keeps trying; a restarted controller
    (which forgot it) gets it back through the heartbeat's exist=false."""
    cport, wport = free_port(), free_port()
    controller_url = f"http://127.0.0.1:{cport}"
    worker = _start(["orchestr.services.model_worker", "--port", str(wport), "--host", "127.0.0.1",
                     "--controller-address", controller_url, "--worker-address", f"http://127.0.0.1:{wport}",
                     "--model-names", MODEL, "--heart-beat-interval", "1", "--kv-cache-tokens", "2048"],
                    tmp_path / "worker.log")
    procs = [worker]

    def models() -> list[str]:
        try:
            return httpx.post(f"{controller_url}/list_models", timeout=5).json()["models"]
        except httpx.HTTPError:
            return []

    def wait_models(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if MODEL in models():
                return True
            time.sleep(0.3)
        return False

    try:
        wait_healthy(f"http://127.0.0.1:{wport}/health", worker, tmp_path / "worker.log", timeout=180)
        time.sleep(1.5)  # it has tried the missing controller by now
        assert worker.poll() is None
        ctrl = _start(["orchestr.services.controller", "--port", str(cport), "--host", "127.0.0.1"],
                      tmp_path / "c1.log")
        procs.append(ctrl)
        wait_healthy(f"{controller_url}/health", ctrl, tmp_path / "c1.log", timeout=60)
        assert wait_models(15), "worker did not register once the controller came up"
        terminate([ctrl])
        ctrl2 = _start(["orchestr.services.controller", "--port", str(cport), "--host", "127.0.0.1"],
                       tmp_path / "c2.log")
        procs.append(ctrl2)
        wait_healthy(f"{controller_url}/health", ctrl2, tmp_path / "c2.log", timeout=60)
        assert wait_models(15), "worker did not re-register with the restarted controller"
    finally:
        terminate(procs)
