"""The OpenAI-compatible API end to end: official openai SDK -> API server -> controller -> real
transformers worker on the embedded SmolLM2 model, all as separate processes on free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REPO, free_port, terminate, wait_healthy

MODEL = "smollm2-135m"
API_KEY = "sk-test-key"

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    controller: str
    api_base: str  # open API server
    keyed_api_base: str  # API server that requires API_KEY
    worker: str
    log_dir: Path
    procs: list[subprocess.Popen]

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api_base, api_key="EMPTY", max_retries=0, timeout=120, **kw)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def start_worker(controller: str, log_dir: Path, name: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = log_dir / f"worker-{name}.log"
    p = _start(
        [
            "orchestr.services.model_worker",
            "--host", "127.0.0.1", "--port", str(port), "--worker-address", url,
            "--controller-address", controller, "--model-names", name, "--heart-beat-interval", "2",
        ],
        log,
    )  # fmt: skip
    wait_healthy(url + "/health", p, log)
    return url, p


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    log_dir = tmp_path_factory.mktemp("api-stack")
    procs: list[subprocess.Popen] = []
    try:
        cport, aport, kport = free_port(), free_port(), free_port()
        controller = f"http://127.0.0.1:{cport}"
        log = log_dir / "controller.log"
        procs.append(
            _start(["orchestr.services.controller", "--host", "127.0.0.1", "--port", str(cport)], log)
        )
        wait_healthy(controller + "/health", procs[-1], log)
        for port, extra in ((aport, []), (kport, ["--api-keys", f"other-key,{API_KEY}"])):
            log = log_dir / f"api-{port}.log"
            procs.append(
                _start(
                    ["orchestr.services.openai_api_server", "--host", "127.0.0.1", "--port", str(port),
                     "--controller-address", controller, *extra],
                    log,
                )
            )  # fmt: skip
            wait_healthy(f"http://127.0.0.1:{port}/health", procs[-1], log)
        worker, wproc = start_worker(controller, log_dir, MODEL)
        procs.append(wproc)
        deadline = time.time() + 60
        while MODEL not in httpx.post(controller + "/list_models").json()["models"]:
            assert time.time() < deadline, "worker never registered"
            time.sleep(0.25)
        yield Stack(
            controller,
            f"http://127.0.0.1:{aport}/v1",
            f"http://127.0.0.1:{kport}/v1",
            worker,
            log_dir,
            procs,
        )
    finally:
        terminate(procs)


# --------------------------------------------------------------------------- happy paths


def test_models_list_and_retrieve(stack):
    client = stack.client()
    assert MODEL in [m.id for m in client.models.list().data]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion(stack):
    r = stack.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello in one sentence."}], max_tokens=24
    )
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 24
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_completion_max_tokens_and_echo(stack):
    prompt = "Once upon a time, in a small village,"
    r = stack.client().completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, echo=True)
    text = r.choices[0].text
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"


def test_completion_default_max_tokens_is_openais_16(stack):
    r = stack.client().completions.create(
        model=MODEL, prompt="Write a long essay about the sea.", temperature=0
    )
    assert 0 < r.usage.completion_tokens <= 16


def test_streamed_chat_arrives_in_chunks_and_matches_non_streamed(stack):
    client = stack.client()
    kw = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=20,
        temperature=0,
    )
    full = client.chat.completions.create(**kw)
    whole = full.choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 3
    assert "".join(deltas) == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert len({c.id for c in chunks}) == 1
    # include_usage: a last chunk without choices carries the same counts as the whole answer.
    assert chunks[-1].choices == []
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [getattr(chunks[-1].usage, k) for k in counts] == [getattr(full.usage, k) for k in counts]
    # the same prompt a second time: its full 16-token blocks came from the prefix cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= 16


def test_streamed_completion(stack):
    stream = stack.client().completions.create(
        model=MODEL, prompt="The sky is", max_tokens=8, temperature=0, stream=True
    )
    texts = [c.choices[0].text for c in stream if c.choices]
    assert len([t for t in texts if t]) >= 3 and "".join(texts).strip()


def test_n_choices(stack):
    client = stack.client()
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a fun fact."}],
        max_tokens=12,
        n=2,
        temperature=1.0,
        seed=7,
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content.strip() for c in r.choices)

    # Usage: the prompt counts once, completion tokens are summed over the choices.
    kw = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=8,
    )
    single = client.chat.completions.create(**kw)
    double = client.chat.completions.create(**kw, n=2)
    assert [c.finish_reason for c in double.choices] == ["length", "length"]
    assert double.usage.prompt_tokens == single.usage.prompt_tokens
    assert double.usage.completion_tokens == 16

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a fun fact."}],
        max_tokens=8,
        n=2,
        stream=True,
    )
    text = {0: "", 1: ""}
    finished = set()
    for c in stream:
        for ch in c.choices:
            text[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.add(ch.index)
    assert finished == {0, 1} and all(text.values())


def test_list_of_prompts(stack):
    prompts = ["Red is a colour that", "Blue is a colour that"]
    r = stack.client().completions.create(model=MODEL, prompt=prompts, max_tokens=4, n=2, echo=True)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    for c in r.choices:  # index = prompt * n + choice
        assert c.text.startswith(prompts[c.index // 2]) and len(c.text) > len(prompts[c.index // 2])
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 16


def test_stop_sequences(stack):
    client = stack.client()
    kw = dict(model=MODEL, prompt="Count: 1, 2, 3, 4,", max_tokens=12, temperature=0)
    free = client.completions.create(**kw).choices[0].text
    assert "," in free  # without a stop the model keeps counting with commas
    stopped = client.completions.create(**kw, stop=[","]).choices[0]
    assert "," not in stopped.text and stopped.finish_reason == "stop"
    assert free.startswith(stopped.text)


def test_embeddings(stack):
    client = stack.client()
    r = client.embeddings.create(model=MODEL, input=["hello world", "the sky is blue"])
    assert [d.index for d in r.data] == [0, 1]
    dim = len(r.data[0].embedding)
    assert dim > 100 and len(r.data[1].embedding) == dim
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens > 0
    # Plain float encoding too (the SDK asks for base64 by default).
    raw = httpx.post(
        stack.api_base + "/embeddings",
        json={"model": MODEL, "input": "hello world", "encoding_format": "float"},
    ).json()
    assert raw["data"][0]["embedding"] == pytest.approx(r.data[0].embedding, rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- errors


def _error(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_unknown_model_is_404(stack):
    with pytest.raises(openai.NotFoundError) as e:
        stack.client().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.code == "model_not_found" and "no-such-model" in e.value.message


def test_bad_parameters_are_400_naming_the_param(stack):
    client = stack.client()
    msgs = [{"role": "user", "content": "hi"}]
    for kwargs, param in (
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=msgs, **kwargs)
        assert e.value.status_code == 400 and e.value.param == param, (kwargs, e.value.body)
    r = httpx.post(stack.api_base + "/chat/completions", json={"messages": msgs})
    assert r.status_code == 400 and _error(r)["param"] == "model"
    r = httpx.post(
        stack.api_base + "/chat/completions", json={"model": MODEL, "messages": [{"role": "robot"}]}
    )
    assert r.status_code == 400 and _error(r)["param"].startswith("messages.0")


def test_malformed_json_is_400(stack):
    r = httpx.post(
        stack.api_base + "/chat/completions",
        content=b'{"model": "smollm2-135m", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert "JSON" in _error(r)["message"]
    r = httpx.post(stack.api_base + "/completions", content=b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in _error(r)["message"]


def test_prompt_longer_than_context_is_400(stack):
    with pytest.raises(openai.BadRequestError) as e:
        stack.client().completions.create(model=MODEL, prompt="hello " * 9000, max_tokens=4)
    assert e.value.code == "context_length_exceeded" and "maximum context length" in e.value.message


def test_unknown_route_is_openai_shaped_404(stack):
    r = httpx.get(stack.api_base + "/nothing-here")
    assert r.status_code == 404 and "Invalid URL" in _error(r)["message"]


def test_api_keys_are_enforced_on_every_route(stack):
    anon = openai.OpenAI(base_url=stack.keyed_api_base, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        anon.models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        anon.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    for path in ("/models", "/completions", "/embeddings"):
        r = httpx.request("GET" if path == "/models" else "POST", stack.keyed_api_base + path, json={})
        assert r.status_code == 401, path
        assert _error(r)["code"] == "invalid_api_key"
    keyed = openai.OpenAI(base_url=stack.keyed_api_base, api_key=API_KEY, max_retries=0)
    assert MODEL in [m.id for m in keyed.models.list().data]
    r = keyed.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r.choices[0].message.content
    # /health stays open for the launcher's health checks.
    assert httpx.get(stack.keyed_api_base.removesuffix("/v1") + "/health").status_code == 200


def test_worker_dying_mid_stream_then_503_not_404(stack):
    name = "smollm2-doomed"
    _, proc = start_worker(stack.controller, stack.log_dir, name)
    client = stack.client()
    try:
        deadline = time.time() + 30
        while name not in [m.id for m in client.models.list().data]:
            assert time.time() < deadline
            time.sleep(0.25)
        stream = client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "Write a very long story about the sea."}],
            max_tokens=2000,
            temperature=0,
            stream=True,
        )
        received = []
        # The worker dies mid-answer and no other serves the model: the stream ends with an error
        # event (which the SDK raises) naming the model, not an address or an exception.
        with pytest.raises(openai.APIError) as e:
            for chunk in stream:
                received.append(chunk.choices[0].delta.content)
                if len(received) == 4:
                    proc.kill()
        message = str(e.value.message)
        assert len(received) >= 4 and f"`{name}`" in message and "no other worker" in message, message
        assert "127.0.0.1" not in message and "Error" not in message, message
    finally:
        proc.kill()
        proc.wait()
    # The model is known but nobody serves it now: 503, not 404.
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=name, prompt="Hi", max_tokens=2)
    assert e.value.status_code == 503, e.value.body
    # The other model is unaffected.
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices


# --------------------------------------------------------------------------- test-message


def _orchestr(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "orchestr", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_test_message_round_trip(stack):
    r = _orchestr(
        "test-message",
        "--controller-address",
        stack.controller,
        "--model-name",
        MODEL,
        "--max-new-tokens",
        "16",
    )
    assert r.returncode == 0, r.stderr
    reply = r.stdout.split("assistant:", 1)[1].strip()
    assert reply
    r = _orchestr("test-message", "--controller-address", stack.controller, "--max-new-tokens", "8")
    assert r.returncode == 0 and MODEL in r.stdout


def test_test_message_fails_clearly(stack):
    r = _orchestr("test-message", "--controller-address", stack.controller, "--model-name", "nope")
    assert r.returncode == 1 and "no worker serves model 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = _orchestr("test-message", "--controller-address", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "cannot connect" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- chat through the API


def test_chat_cli_through_the_api(stack, tmp_path):
    saved = tmp_path / "conv.json"
    script = f"Hello!\n!!regen\nWhat is 2+2?\n!!remove\n!!save {saved}\n!!exit\n"
    r = _orchestr(
        "chat", "--api-base", stack.api_base, "--model", MODEL, "--max-new-tokens", "12", "--temperature", "0",
        stdin=script,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("assistant: ") == 3  # reply, its regeneration, the reply that !!remove drops
    conv = json.loads(saved.read_text())
    assert conv["model"] == MODEL
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][0]["content"] == "Hello!" and conv["messages"][1]["content"].strip()


def test_streams_survive_the_workers_keep_alive_timeout(stack):
    # The API server pools its connections to workers; uvicorn closes idle ones after 5 s.
    # A stream after that must open a fresh connection instead of failing.
    client = stack.client()
    kw = dict(model=MODEL, prompt="Hello", max_tokens=3, temperature=0, stream=True)
    first = "".join(c.choices[0].text for c in client.completions.create(**kw) if c.choices)
    time.sleep(6)
    again = "".join(c.choices[0].text for c in client.completions.create(**kw) if c.choices)
    assert first and again == first


def test_client_leaving_mid_stream_frees_the_worker(stack):
    def queue() -> int:
        return httpx.post(stack.worker + "/worker_get_status").json()["queue_length"]

    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", stack.api_base + "/chat/completions", json=body, timeout=60) as r:
        lines = 0
        for line in r.iter_lines():
            lines += bool(line)
            if lines == 5:
                assert queue() == 1
                break
    # The API server closes its worker stream when the client goes; the worker drops the request.
    deadline = time.time() + 10
    while queue() != 0:
        assert time.time() < deadline, "the worker still runs the abandoned request"
        time.sleep(0.2)


def test_real_worker_re_registers_after_controller_restart(stack):
    """Kept last in the module: it replaces the stack's controller with a fresh one."""
    old = stack.procs[0]
    assert "orchestr.services.controller" in old.args
    old.send_signal(signal.SIGTERM)
    old.wait(15)
    port = stack.controller.rsplit(":", 1)[1]
    log = stack.log_dir / "controller-2.log"
    new = _start(["orchestr.services.controller", "--host", "127.0.0.1", "--port", port], log)
    stack.procs[0] = new
    wait_healthy(stack.controller + "/health", new, log)
    # A fresh controller process starts with an empty table (no persisted state), so the worker
    # being listed proves it registered again: its next heartbeat gets exist=false (or, if it
    # noticed the controller was gone, its retry loop registers as soon as the port answers).
    deadline = time.time() + 20
    while MODEL not in httpx.post(stack.controller + "/list_models").json()["models"]:
        assert time.time() < deadline, "the worker did not re-register"
        time.sleep(0.25)
    status = httpx.post(stack.controller + "/worker_get_status").json()
    assert [w["worker_name"] for w in status["workers"]] == [stack.worker]
    r = stack.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert r.choices[0].message.content
