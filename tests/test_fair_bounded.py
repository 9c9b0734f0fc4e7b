"""Fair and bounded serving (issue 26), end to end on the real model: a controller, one real
transformers worker and two API servers as separate processes on free ports. The open server has
short connection timeouts; the keyed one has rate limits and small per-request caps.

Token-id prompts of any length, strict types, per-request caps (400 naming the limit), rate limits
(429 + Retry-After), failed-auth slow-down, /metrics behind the key, idle and slow-header
connections dropped, 404 before a stream, a worker dying mid-stream ending the stream with an
error event and a clean end, cancellation of abandoned embeddings, schemathesis with all checks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import REPO, free_port, terminate, wait_healthy

MODEL = "smollm2-135m"
DOOMED = "smollm2-doomed"
RATE_KEY, CAPS_KEY = "sk-rate-limited", "sk-caps"
IDLE_S = 2.0  # the open server's keep-alive and header timeouts
CAPS = {"max-sequences": 8, "max-prompt-tokens": 4000, "max-embedding-inputs": 4, "max-embedding-tokens": 2000}

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    controller: str
    open_base: str  # open API server, short connection timeouts
    keyed_base: str  # API keys, rate limit of 10 requests a minute, small caps
    worker: str
    worker_pid: int
    log_dir: Path
    procs: list[subprocess.Popen]

    def client(self, base: str | None = None, key: str = "EMPTY") -> openai.OpenAI:
        return openai.OpenAI(base_url=base or self.open_base, api_key=key, max_retries=0, timeout=120)


def _start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def _worker(controller: str, log_dir: Path, name: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = log_dir / f"worker-{name}.log"
    p = _start(["orchestr.services.model_worker", "--host", "127.0.0.1", "--port", str(port),
                "--worker-address", url, "--controller-address", controller, "--model-names", name,
                "--heart-beat-interval", "2"], log)
    wait_healthy(url + "/health", p, log)
    return url, p


def _wait_listed(controller: str, name: str) -> None:
    deadline = time.time() + 60
    while name not in httpx.post(controller + "/list_models").json()["models"]:
        assert time.time() < deadline, f"{name} never registered"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    log_dir = tmp_path_factory.mktemp("fair-bounded")
    procs: list[subprocess.Popen] = []
    try:
        cport, oport, kport = free_port(), free_port(), free_port()
        controller = f"http://127.0.0.1:{cport}"
        procs.append(_start(["orchestr.services.controller", "--host", "127.0.0.1", "--port", str(cport)],
                            log_dir / "controller.log"))
        wait_healthy(controller + "/health", procs[-1], log_dir / "controller.log")
        api = ["orchestr.services.openai_api_server", "--host", "127.0.0.1", "--controller-address", controller]
        servers = (
            (oport, [f"--keep-alive-timeout-s={IDLE_S}", f"--header-timeout-s={IDLE_S}"], {}),
            (kport, ["--rate-limit-requests=10", "--rate-limit-window-s=600",
                     *(f"--{k}={v}" for k, v in CAPS.items())],
             {"ORCHESTR_API_KEYS": f"{RATE_KEY},{CAPS_KEY}"}),
        )
        for port, flags, env in servers:
            log = log_dir / f"api-{port}.log"
            procs.append(_start([*api, "--port", str(port), *flags], log, env))
            wait_healthy(f"http://127.0.0.1:{port}/health", procs[-1], log)
        worker, wproc = _worker(controller, log_dir, MODEL)
        procs.append(wproc)
        _wait_listed(controller, MODEL)
        yield Stack(controller, f"http://127.0.0.1:{oport}/v1", f"http://127.0.0.1:{kport}/v1", worker, wproc.pid,
                    log_dir, procs)
    finally:
        terminate(procs)


def _error(r: httpx.Response) -> dict:
    return r.json()["error"]


# --------------------------------------------------------------------------- what the API accepts


def test_token_id_prompts_of_any_length_up_to_the_context(stack):
    client = stack.client()
    r = client.completions.create(model=MODEL, prompt=[28] * 1000, max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens == 1000 and len(r.choices) == 1
    # lm-evaluation-harness's loglikelihood shape: contexts over 64 tokens, echoed with logprobs
    ids = httpx.post(stack.open_base.removesuffix("/v1") + "/tokenize", json={"model": MODEL, "prompt": "The sea. " * 30})
    context = ids.json()["tokens"]
    assert len(context) > 64
    r = client.completions.create(model=MODEL, prompt=[context, context[:-5]], max_tokens=1, echo=True, logprobs=1,
                                  temperature=0)
    lengths = [len(c.logprobs.token_logprobs) for c in r.choices]
    assert lengths == [len(context) + 1, len(context) - 4]
    assert r.choices[0].logprobs.token_logprobs[0] is None and all(
        lp <= 0 for lp in r.choices[0].logprobs.token_logprobs[1:])


def test_integers_are_strict(stack):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    for bad in ("16", True):
        r = httpx.post(stack.open_base + "/completions", json={**body, "max_tokens": bad})
        assert r.status_code == 400 and _error(r)["param"] == "max_tokens", r.text
    r = httpx.post(stack.open_base.removesuffix("/v1") + "/detokenize", json={"model": MODEL, "tokens": ["1"]})
    assert r.status_code == 400 and _error(r)["param"].startswith("tokens")
    # 2.0 is an integer to JSON Schema, and so here
    assert httpx.post(stack.open_base + "/completions", json={**body, "max_tokens": 2.0}, timeout=60).status_code == 200


def test_no_build_path_or_exception_name_in_messages(stack):
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}}}
    r = httpx.post(stack.open_base + "/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    message = _error(r)["message"]
    assert r.status_code == 400 and "minimum greater than maximum" in message, message
    assert "/project" not in message and ".cc" not in message and "Error" not in message


# --------------------------------------------------------------------------- bounded cost


def test_caps_are_400s_naming_the_limit(stack):
    client = stack.client(stack.keyed_base, CAPS_KEY)
    cases = (
        (lambda: client.completions.create(model=MODEL, prompt=["a", "b", "c"], n=4, max_tokens=1),
         "max_sequences", "n"),
        (lambda: client.completions.create(model=MODEL, prompt=[28] * 2500, n=2, max_tokens=1),
         "max_prompt_tokens", "prompt"),
        (lambda: client.chat.completions.create(model=MODEL, n=2, max_tokens=1,
                                                messages=[{"role": "user", "content": "word " * 2500}]),
         "max_prompt_tokens", "messages"),
        (lambda: client.embeddings.create(model=MODEL, input=["a", "b", "c", "d", "e"]), "max_embedding_inputs", "input"),
        (lambda: client.embeddings.create(model=MODEL, input=[[28] * 1000] * 3), "max_embedding_tokens", "input"),
    )
    for call, key, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.code == "request_too_large" and f"services.api.{key}" in e.value.message, e.value.body
        assert e.value.param == param
    # a text whose byte bound passes the cap is counted exactly: 2,500 bytes of one repeated word fit
    assert client.embeddings.create(model=MODEL, input=["ab" * 1250]).data


def test_the_11th_request_in_a_window_of_10_is_429_with_retry_after(stack):
    headers = {"Authorization": f"Bearer {RATE_KEY}"}
    codes = [httpx.get(stack.keyed_base + "/models", headers=headers).status_code for _ in range(10)]
    assert codes == [200] * 10
    r = httpx.get(stack.keyed_base + "/models", headers=headers)
    assert r.status_code == 429 and _error(r)["code"] == "rate_limit_requests"
    assert 0 < int(r.headers["retry-after"]) <= 600
    with pytest.raises(openai.RateLimitError):
        stack.client(stack.keyed_base, RATE_KEY).models.list()
    # budgets are per key
    assert httpx.get(stack.keyed_base + "/models", headers={"Authorization": f"Bearer {CAPS_KEY}"}).status_code == 200


def test_failed_authentications_are_slowed_per_address(stack):
    bad = {"Authorization": "Bearer wrong"}
    t0 = time.monotonic()
    codes = [httpx.get(stack.keyed_base + "/models", headers=bad).status_code for _ in range(9)]
    assert codes == [401] * 9
    assert time.monotonic() - t0 >= 1.4  # the 6th..9th waited 0.1 + 0.2 + 0.4 + 0.8 s


def test_metrics_want_the_key_when_keys_are_set(stack):
    root = stack.keyed_base.removesuffix("/v1")
    assert httpx.get(root + "/metrics").status_code == 401
    r = httpx.get(root + "/metrics", headers={"Authorization": f"Bearer {CAPS_KEY}"})
    assert r.status_code == 200 and "orchestr:http_requests_total" in r.text


# --------------------------------------------------------------------------- connections


def _closed_after(sock: socket.socket, limit: float = 30) -> float:
    """Seconds until the server closes ``sock`` (reading whatever it sends first)."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    while sock.recv(4096):
        pass
    return time.monotonic() - t0


def test_idle_and_slow_header_connections_are_closed(stack):
    host, port = stack.open_base.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port))) as idle:
        assert IDLE_S * 0.8 <= _closed_after(idle) <= IDLE_S + 5
    with socket.create_connection((host, int(port))) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert _closed_after(slow) <= IDLE_S + 5
    with socket.create_connection((host, int(port))) as kept:
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _closed_after(kept) <= IDLE_S + 5  # the response, then the keep-alive timeout


# --------------------------------------------------------------------------- streams


@pytest.mark.parametrize("route", ["/chat/completions", "/responses"])
def test_streaming_with_an_unknown_model_is_404_before_the_stream(stack, route):
    body = {"model": "no-such-model", "stream": True}
    body.update({"input": "hi"} if route == "/responses" else {"messages": [{"role": "user", "content": "hi"}]})
    r = httpx.post(stack.open_base + route, json=body)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
    assert _error(r)["code"] == "model_not_found"


def test_streamed_responses_past_the_context_is_400_before_the_stream(stack):
    r = httpx.post(stack.open_base + "/responses", timeout=60,
                   json={"model": MODEL, "stream": True, "input": "hi", "max_output_tokens": 100000})
    assert r.status_code == 400 and _error(r)["code"] == "context_length_exceeded"


def _queue(stack) -> int:
    return httpx.post(stack.worker + "/worker_get_status").json()["queue_length"]


@pytest.mark.parametrize("route", ["/chat/completions", "/completions"])
def test_a_client_leaving_a_non_streamed_request_frees_the_worker(stack, route):
    body = {"model": MODEL, "max_tokens": 1500, "temperature": 0}
    body.update({"prompt": "Once upon a time"} if route == "/completions"
                else {"messages": [{"role": "user", "content": "Write a very long story about the sea."}]})
    left = threading.Event()

    def leave_after_4s() -> None:
        try:
            httpx.post(stack.open_base + route, json=body, timeout=httpx.Timeout(5, read=4))
        except httpx.TimeoutException:
            left.set()

    t = threading.Thread(target=leave_after_4s, daemon=True)
    t.start()
    deadline = time.time() + 4
    while _queue(stack) != 1:  # the worker runs it
        assert time.time() < deadline and not left.is_set()
        time.sleep(0.1)
    t.join()
    assert left.is_set()
    deadline = time.time() + 10
    while _queue(stack) != 0:
        assert time.time() < deadline, "the worker still runs the abandoned request"
        time.sleep(0.2)


def test_a_worker_dying_mid_stream_ends_each_stream_with_an_error_event(stack):
    _, proc = _worker(stack.controller, stack.log_dir, DOOMED)
    try:
        _wait_listed(stack.controller, DOOMED)
        prompt = "Write a very long story about the sea."
        bodies = {"/chat/completions": {"model": DOOMED, "stream": True, "max_tokens": 2000, "temperature": 0,
                                        "messages": [{"role": "user", "content": prompt}]},
                  "/responses": {"model": DOOMED, "stream": True, "max_output_tokens": 2000, "temperature": 0,
                                 "input": prompt}}
        with httpx.Client(timeout=120) as http:
            streams = {route: http.send(http.build_request("POST", stack.open_base + route, json=body), stream=True)
                       for route, body in bodies.items()}
            lines = {route: s.iter_lines() for route, s in streams.items()}
            seen: dict[str, list[str]] = {route: [] for route in streams}
            for route, it in lines.items():  # both are generating
                while sum(line.startswith("data: ") for line in seen[route]) < 4:
                    seen[route].append(next(it))
            proc.kill()
            for route, it in lines.items():
                seen[route] += list(it)  # to the end: a clean end, no broken connection
                streams[route].close()
        chat = [ln for ln in seen["/chat/completions"] if ln.startswith("data: ")]
        assert chat[-1] == "data: [DONE]" and "error" in json.loads(chat[-2][6:]), chat[-3:]
        events = [ln for ln in seen["/responses"] if ln.startswith("event: ")]
        assert events[0] == "event: response.created" and events[-1] == "event: error", events[-3:]
        error = json.loads([ln for ln in seen["/responses"] if ln.startswith("data: ")][-1][6:])
        assert error["type"] == "error" and error["message"]
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- conformance


SCHEMATHESIS_HOOKS = '''
import httpx, schemathesis

VOCAB = httpx.get("{root}/tokenizer_info").json()["vocab_size"]


@schemathesis.hook("filter_body").apply_to(path="/detokenize")
def ids_in_the_vocabulary(context, body):
    # the schema cannot state the served model's vocabulary size (known at run time); ids past it
    # are the client's mistake (400), so schema-valid bodies keep to it
    return not isinstance(body, dict) or all(0 <= t < VOCAB for t in body.get("tokens") or [] if isinstance(t, int))
'''


def test_schemathesis_finds_no_failures(stack, tmp_path):
    root = stack.open_base.removesuffix("/v1")
    (tmp_path / "st_hooks.py").write_text(SCHEMATHESIS_HOOKS.format(root=root))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "SCHEMATHESIS_HOOKS": "st_hooks"}
    cmd = [str(Path(sys.executable).with_name("st")), "run", root + "/openapi.json", "--checks", "all",
           "--max-examples", "10", "--request-timeout", "120", "--no-color", "--seed", "26"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


# --------------------------------------------------------------------------- sharing the worker

LONG_INPUT = "The quick brown fox jumps over the lazy dog. " * 800  # about 8,000 tokens


def _small_chat_seconds(stack) -> float:
    t0 = time.monotonic()
    client = openai.OpenAI(base_url=stack.open_base, api_key="EMPTY", max_retries=0, timeout=10)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=4, temperature=0)
    assert r.choices[0].message.content is not None
    return time.monotonic() - t0


@pytest.mark.xfail(reason="needs chunked embeddings in the engine (lead)", strict=False)
def test_a_small_chat_is_answered_while_long_embeddings_run(stack):
    done = threading.Event()

    def embed() -> None:
        try:  # a client that gives up after 15 s, so a failing run does not hold the worker for long
            httpx.post(stack.open_base + "/embeddings", json={"model": MODEL, "input": [LONG_INPUT] * 4},
                       timeout=15)
        except httpx.TimeoutException:
            pass
        finally:
            done.set()

    t = threading.Thread(target=embed, daemon=True)
    t.start()
    try:
        time.sleep(2)  # the embeddings are running
        assert not done.is_set()
        assert _small_chat_seconds(stack) < 5
    finally:
        t.join()


def _cpu_idle_within(pid: int, seconds: float) -> bool:
    worker = psutil.Process(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if worker.cpu_percent(interval=0.5) < 20:
            return True
    return False


@pytest.mark.xfail(reason="needs chunked embeddings in the engine (lead)", strict=False)
def test_abandoned_embeddings_stop(stack):
    def embed() -> None:
        try:
            httpx.post(stack.open_base + "/embeddings", json={"model": MODEL, "input": [LONG_INPUT] * 4}, timeout=3)
        except httpx.TimeoutException:
            pass  # the client leaves after 3 s

    t = threading.Thread(target=embed, daemon=True)
    t.start()
    t.join()
    assert _cpu_idle_within(stack.worker_pid, 5), "the worker still computes the abandoned embeddings"
    assert _small_chat_seconds(stack) < 5
