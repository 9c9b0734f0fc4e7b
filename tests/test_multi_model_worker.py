"""The multi-model worker: command-line sections (fast), and two real models (fp32 and int8 of
the embedded model) in one worker process behind a real controller and OpenAI API server,
reached with the openai SDK (slow)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from orchestr.services.multi_model_worker import ArgsError, model_specs, parse, split_argv
from tests.conftest import free_ports

EMB = "embedded://SmolLM2-135M-Instruct"


# --------------------------------------------------------------------------- argument sections


def test_each_model_path_starts_a_section_with_its_own_options():
    argv = ["--port", "9", "--device", "cpu",
            "--model-path", EMB, "--model-names", "fp32,alias", "--dtype", "float32",
            "--model-path", EMB, "--model-names", "int8", "--load-8bit",
            "--limit-worker-concurrency", "3", "--no-batching"]
    worker, shared, sections = split_argv(argv)
    assert worker == ["--port", "9", "--limit-worker-concurrency", "3", "--no-batching"]
    assert shared == ["--device", "cpu"]
    assert sections == [["--model-path", EMB, "--model-names", "fp32,alias", "--dtype", "float32"],
                        ["--model-path", EMB, "--model-names", "int8", "--load-8bit"]]
    args, specs = parse(argv)
    assert args.port == 9 and args.limit_worker_concurrency == 3 and args.batching is False
    assert [s.names for s in specs] == [["fp32", "alias"], ["int8"]]
    assert [(s.args.dtype, s.args.load_8bit, s.args.device) for s in specs] == [
        ("float32", False, "cpu"), ("auto", True, "cpu")]


def test_fastchat_form_pairs_names_with_paths_in_order():
    _, specs = parse(["--model-path", "/m/a", "--model-path", "/m/b", "--model-names", "a", "--model-names", "b"])
    assert [(s.names, s.args.model_path) for s in specs] == [(["a"], "/m/a"), (["b"], "/m/b")]


def test_default_names_and_equals_form():
    _, specs = parse(["--model-path=/models/vicuna-7b", "--model-path", "/x/llama.gguf", "--dtype=bfloat16"])
    assert [s.names for s in specs] == [["vicuna-7b"], ["llama"]]
    assert [s.args.dtype for s in specs] == ["auto", "bfloat16"]


@pytest.mark.parametrize("argv, message", [
    ([], "at least one --model-path"),
    (["--model-names", "x", "--model-path", "/a"], "before the first --model-path"),
    (["--model-path", "/a", "--model-names", "x", "--model-path", "/b", "--model-names", "x"], "two models"),
])
def test_unusable_command_lines(argv, message):
    _, shared, sections = split_argv(argv)
    with pytest.raises(ArgsError, match=message):
        model_specs(shared, sections)


def test_bad_command_line_is_a_one_line_usage_error():
    proc = subprocess.run([sys.executable, "-m", "orchestr.services.multi_model_worker", "--port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "error: give at least one --model-path" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- real processes


def _start(module: str, args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=dict(os.environ), start_new_session=True)


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300, check=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            r = httpx.post(url, timeout=2) if check else httpx.get(url, timeout=2)
            if r.status_code == 200 and (check is None or check(r.json())):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class MultiDeployment:
    api_base: str
    worker_url: str
    controller_url: str


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> Iterator[MultiDeployment]:
    root = tmp_path_factory.mktemp("multi")
    ctl_port, worker_port, api_port = free_ports(3)
    ctl, worker_url = f"http://127.0.0.1:{ctl_port}", f"http://127.0.0.1:{worker_port}"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start("orchestr.services.controller", ["--host", "127.0.0.1", "--port", str(ctl_port)],
                            root / "controller.log"))
        _wait(f"{ctl}/health", procs[-1], root / "controller.log")
        procs.append(_start("orchestr.services.multi_model_worker", [
            "--host", "127.0.0.1", "--port", str(worker_port), "--controller-address", ctl,
            "--worker-address", worker_url, "--heart-beat-interval", "5",
            # one request at a time across both models: the limit is shared
            "--limit-worker-concurrency", "1", "--kv-cache-tokens", "4096", "--device", "cpu",
            "--model-path", EMB, "--model-names", "smollm2-fp32", "--dtype", "float32",
            "--model-path", EMB, "--model-names", "smollm2-int8,smollm2-q8", "--dtype", "float32", "--load-8bit",
        ], root / "worker.log"))
        _wait(f"{ctl}/list_models", procs[-1], root / "worker.log",
              check=lambda body: {"smollm2-fp32", "smollm2-int8", "smollm2-q8"} <= set(body["models"]))
        procs.append(_start("orchestr.services.openai_api_server",
                            ["--host", "127.0.0.1", "--port", str(api_port), "--controller-address", ctl],
                            root / "api.log"))
        _wait(f"http://127.0.0.1:{api_port}/health", procs[-1], root / "api.log")
        yield MultiDeployment(api_base=f"http://127.0.0.1:{api_port}/v1", worker_url=worker_url, controller_url=ctl)
    finally:
        for p in reversed(procs):
            _stop(p)


@pytest.mark.slow
def test_one_worker_registers_every_model_once(multi):
    status = httpx.post(f"{multi.controller_url}/worker_get_status", timeout=10).json()
    workers = [w for w in status["workers"] if w["worker_name"] == multi.worker_url]
    assert len(workers) == 1
    assert sorted(workers[0]["model_names"]) == ["smollm2-fp32", "smollm2-int8", "smollm2-q8"]


@pytest.mark.slow
def test_each_model_answers_through_the_openai_api(multi):
    from openai import OpenAI

    client = OpenAI(base_url=multi.api_base, api_key="none", timeout=300)
    assert {"smollm2-fp32", "smollm2-int8", "smollm2-q8"} <= {m.id for m in client.models.list().data}
    answers = {}
    for name in ("smollm2-fp32", "smollm2-int8"):
        r = client.chat.completions.create(model=name, temperature=0, max_tokens=24,
                                           messages=[{"role": "user", "content": "Name three colours."}])
        assert r.model == name and r.choices[0].message.content.strip()
        assert r.usage.completion_tokens > 0
        answers[name] = r.choices[0].message.content
        stream = client.chat.completions.create(model=name, temperature=0, max_tokens=24, stream=True,
                                                messages=[{"role": "user", "content": "Name three colours."}])
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed == answers[name]  # greedy: the stream is the same answer
    # The alias reaches the int8 engine: same greedy answer.
    r = client.chat.completions.create(model="smollm2-q8", temperature=0, max_tokens=24,
                                       messages=[{"role": "user", "content": "Name three colours."}])
    assert r.choices[0].message.content == answers["smollm2-int8"]


@pytest.mark.slow
def test_requests_are_routed_to_their_own_engine(multi):
    details = {n: httpx.post(f"{multi.worker_url}/model_details", json={"model": n}, timeout=10).json()
               for n in ("smollm2-fp32", "smollm2-int8")}
    assert details["smollm2-fp32"]["dtype"] == "float32"
    assert details["smollm2-int8"]["dtype"] == "int8"
    bad = httpx.post(f"{multi.worker_url}/worker_generate",
                     json={"model": "nope", "prompt": "hi", "max_new_tokens": 2}, timeout=30).json()
    assert bad["error_code"] == 40301 and "smollm2-fp32" in bad["error"]


@pytest.mark.slow
def test_concurrency_limit_is_shared_by_the_models(multi):
    """With --limit-worker-concurrency 1, a request to the int8 model waits for the fp32 one."""
    from openai import OpenAI

    client = OpenAI(base_url=multi.api_base, api_key="none", timeout=300)
    marks: dict[str, float] = {}

    def long_fp32() -> None:
        stream = client.chat.completions.create(
            model="smollm2-fp32", temperature=0, max_tokens=96, stream=True,
            messages=[{"role": "user", "content": "Write a long story about a lighthouse."}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and "fp32_first" not in marks:
                marks["fp32_first"] = time.monotonic()
        marks["fp32_end"] = time.monotonic()

    t = threading.Thread(target=long_fp32)
    t.start()
    deadline = time.monotonic() + 120
    while "fp32_first" not in marks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "fp32_first" in marks
    queue = httpx.post(f"{multi.worker_url}/worker_get_status", timeout=10).json()["queue_length"]
    assert queue == 1
    stream = client.chat.completions.create(model="smollm2-int8", temperature=0, max_tokens=8, stream=True,
                                            messages=[{"role": "user", "content": "Say hi."}])
    first = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.monotonic()
    t.join(timeout=300)
    assert first is not None and "fp32_end" in marks
    # The int8 request got its first token only once the fp32 one had finished (small slack for
    # the last fp32 chunk and the int8 one travelling back through the API server).
    assert first >= marks["fp32_end"] - 0.25
