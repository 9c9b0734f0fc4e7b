"""The OpenVINO worker: config and request mapping, the import guard, the launcher's command line
(fast); and a real OpenVINO worker (openvino-genai, model exported by .venv-openvino) behind the
controller and the OpenAI API (slow, one deployment for the module)."""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import shlex
import subprocess
import sys
import time

import httpx
import pytest

from orchestr.engine.openvino_export import export_command, export_python
from orchestr.protocol import GenerateRequest
from orchestr.services.openvino_engine import (
    INSTALL_HINT,
    finish_reason,
    generation_settings,
    ov_message,
    plugin_properties,
    scheduler_settings,
)
from orchestr.services.openvino_worker import build_parser
from tests.conftest import ORCHESTR, REPO, one_model_deployment

MODEL = "smollm2-135m"
# Greedy bf16 answers of OpenVINO and of the transformers engine must agree on at least this many
# leading words: both run the same weights in bf16, but OpenVINO's kernels round differently
# (other accumulation orders, fused ops), so an exact match of a long answer is not promised.
AGREE_WORDS = 6


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# --------------------------------------------------------------------------- config -> pipeline settings


def test_engine_keys_size_the_scheduler():
    s = scheduler_settings(_args(["--max-batch-size", "16", "--max-num-batched-tokens", "256",
                                  "--kv-cache-tokens", "1000"]))
    assert s["max_num_seqs"] == 16 and s["max_num_batched_tokens"] == 256
    assert s["num_kv_blocks"] == 32  # 1000 tokens in blocks of 32, rounded up
    assert s["cache_size"] == 0 and s["dynamic_split_fuse"] is True
    assert s["enable_prefix_caching"] is True  # engine.prefix_caching, on by default as for the hf worker
    assert scheduler_settings(_args(["--no-prefix-caching"]))["enable_prefix_caching"] is False
    assert scheduler_settings(_args(["--no-batching"]))["max_num_seqs"] == 1


def test_threads_and_precision_become_plugin_properties():
    assert plugin_properties(_args([])) == {}  # OpenVINO's own choices
    props = plugin_properties(_args(["--num-threads", "2", "--dtype", "bfloat16"]))
    assert props == {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "bf16", "KV_CACHE_PRECISION": "bf16"}


def test_greedy_request_maps_to_greedy_decoding():
    req = GenerateRequest(model="m", prompt="x", temperature=0.0, top_p=0.5, top_k=40, max_new_tokens=16,
                          stop=["\n\n"], stop_token_ids=[7])
    kw = generation_settings(req, 10, 2048, ["\n\n"], [7, 2])
    assert kw["do_sample"] is False and "temperature" not in kw and "top_k" not in kw and "rng_seed" not in kw
    assert kw["max_new_tokens"] == 16 and kw["stop_strings"] == {"\n\n"} and kw["stop_token_ids"] == {7, 2}
    assert kw["include_stop_str_in_output"] is True and kw["apply_chat_template"] is False


def test_sampled_request_keeps_its_parameters_and_gets_a_seed():
    req = GenerateRequest(model="m", prompt="x", temperature=0.8, top_p=0.9, top_k=-1, repetition_penalty=1.1,
                          presence_penalty=0.5, frequency_penalty=0.25, seed=3)
    kw = generation_settings(req, 100, 2048, [], [])
    assert (kw["do_sample"], kw["temperature"], kw["top_p"], kw["rng_seed"]) == (True, 0.8, 0.9, 3)
    assert "top_k" not in kw  # -1: no top-k filtering
    assert (kw["repetition_penalty"], kw["presence_penalty"], kw["frequency_penalty"]) == (1.1, 0.5, 0.25)
    assert kw["max_new_tokens"] == 1948  # no max_new_tokens: up to the context
    unseeded = {generation_settings(GenerateRequest(model="m", prompt="x", temperature=1.0), 1, 64, [], [])["rng_seed"]
                for _ in range(8)}
    assert len(unseeded) > 1  # not OpenVINO's one default seed for every request


def test_max_tokens_is_clipped_to_the_context_and_overflow_is_refused():
    req = GenerateRequest(model="m", prompt="x", max_new_tokens=500)
    assert generation_settings(req, 2000, 2048, [], [])["max_new_tokens"] == 48
    with pytest.raises(ValueError, match="context"):
        generation_settings(req, 2048, 2048, [], [])


def test_finish_reasons_and_error_text():
    assert [finish_reason(r) for r in ("STOP", "LENGTH", "TOOL_CALL")] == ["stop", "length", "stop"]
    err = RuntimeError("Check 'x' failed at /build/src/generation_config.cpp:335:\n'top_p' must be in (0, 1]\n")
    assert ov_message(err) == "'top_p' must be in (0, 1]"


def test_export_command_and_exporter_lookup(monkeypatch, tmp_path):
    cmd = export_command("/py", tmp_path / "hf", tmp_path / "out", "int8")
    assert cmd[:3] == ["/py", "-m", "optimum.commands.optimum_cli"] and "--sym" in cmd
    assert cmd[cmd.index("--weight-format") + 1] == "int8" and cmd[-1] == str(tmp_path / "out")
    monkeypatch.setenv("ORCHESTR_OPENVINO_EXPORT_PYTHON", "/opt/exporter/bin/python")
    assert export_python() == "/opt/exporter/bin/python"


@pytest.mark.parametrize("argv", [["--max-batch-size", "0"], ["--num-threads", "0"], ["--dtype", "int4"],
                                  ["--weight-format", "q4"]])
def test_bad_flags_are_usage_errors(argv):
    proc = subprocess.run([sys.executable, "-m", "orchestr.services.openvino_worker", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- import guard


@pytest.mark.parametrize("module", ["orchestr/services/openvino_worker.py", "orchestr/services/openvino_engine.py",
                                    "orchestr/engine/openvino_export.py"])
def test_no_module_level_import_of_openvino(module):
    tree = ast.parse((REPO / module).read_text())
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not any(n.split(".")[0] in ("openvino", "openvino_genai", "optimum") for n in names), ast.unparse(node)


def test_without_openvino_genai_the_worker_exits_with_one_line():
    code = ("import sys; sys.modules['openvino_genai'] = None\n"
            "from orchestr.services.openvino_worker import main\n"
            "main(['--no-register'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {INSTALL_HINT}"], proc.stderr


# --------------------------------------------------------------------------- the launcher's command line


def test_plan_renders_an_openvino_worker_this_parser_accepts():
    out = subprocess.run([*ORCHESTR, "launch", "model=smollm2-135m-openvino", "engine.num_threads=2",
                          "engine.kv_cache_tokens=4096", "launch.dry_run=true"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(shlex.split(ln) for ln in out.stdout.splitlines() if "orchestr.services.openvino_worker" in ln)
    args = build_parser().parse_args(line[line.index("-m") + 2:])
    assert args.model_names == MODEL and args.dtype == "bfloat16" and args.max_model_len == 2048
    assert args.num_threads == 2 and scheduler_settings(args)["num_kv_blocks"] == 128
    assert args.weight_format == "fp32"


def test_setup_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "setup_openvino.sh")], check=True)
    assert ".venv-openvino" in (REPO / ".gitignore").read_text()
    assert "setup_openvino.sh" in (REPO / "scripts" / "test.sh").read_text()


# --------------------------------------------------------------------------- real OpenVINO


def _openvino_reason() -> str | None:
    probe = subprocess.run([sys.executable, "-c", "import openvino_genai"], capture_output=True, text=True,
                           timeout=120)
    if probe.returncode != 0:
        return f"openvino-genai is not installed here ({INSTALL_HINT})"
    if export_python() is None:
        return "no OpenVINO exporter (.venv-openvino: run scripts/setup_openvino.sh)"
    return None


@pytest.fixture(scope="module")
def ov_deployment(tmp_path_factory):
    reason = _openvino_reason()
    if reason:
        pytest.skip(reason)
    with one_model_deployment(tmp_path_factory.mktemp("openvino"), "model=smollm2-135m-openvino",
                              "engine.max_batch_size=4", "engine.kv_cache_tokens=4096") as dep:
        yield dep


@pytest.fixture(scope="module")
def client(ov_deployment):
    from openai import OpenAI

    return OpenAI(base_url=ov_deployment["api_base"], api_key="none", timeout=300)


QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.mark.slow
@pytest.mark.openvino
def test_openvino_worker_serves_chat_completion_and_streams(ov_deployment, client):
    auth = ov_deployment["auth"]
    details = httpx.post(f"{ov_deployment['worker']}/model_details", json={"model": MODEL}, headers=auth,
                         timeout=10).json()
    assert details["backend"] == "openvino" and details["dtype"] == "bfloat16" and details["context_length"] == 2048
    workers = httpx.post(f"{ov_deployment['controller']}/list_models", headers=auth, timeout=10).json()
    assert MODEL in workers["models"]  # registered with the controller
    assert [m.id for m in client.models.list().data] == [MODEL]
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32)
    answer = r.choices[0].message.content
    assert "Paris" in answer and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 10
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32, stream=True)
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(chunks) == answer and sum(1 for c in chunks if c) > 3  # streamed in pieces
    c = client.completions.create(model=MODEL, prompt="One, two, three, four,", temperature=0, max_tokens=40,
                                  stop=["seven"])
    assert "seven" not in c.choices[0].text and "six" in c.choices[0].text and c.choices[0].finish_reason == "stop"
    c = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=5)
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 5
    sampled = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0.9, top_p=0.9,
                                        max_tokens=8, seed=11)
    assert sampled.usage.completion_tokens == 8


@pytest.mark.slow
@pytest.mark.openvino
def test_bad_parameters_are_a_400_naming_the_problem(client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=4000)
    assert "context" in str(err.value)


@pytest.mark.slow
@pytest.mark.openvino
def test_structured_output_through_openvino_grammar_and_refused_features(client):
    from openai import BadRequestError

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"]}
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=48,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "answer", "schema": schema}})
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"city"} and isinstance(data["city"], str)
    with pytest.raises(BadRequestError) as err:  # no OpenVINO counterpart: refused, never ignored
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, logit_bias={"42": 5})
    assert "logit_bias" in str(err.value)


@pytest.mark.slow
@pytest.mark.openvino
def test_client_disconnect_frees_its_slot(ov_deployment):
    """A long request whose client leaves mid-stream is cancelled in the pipeline (the worker logs
    it with the number of sequences still running), and the next request is served."""
    log_file = next(f for f in (ov_deployment["root"] / "logs").glob("*.log") if "worker" in f.name)
    before = len(log_file.read_text(errors="replace"))

    def cancelled() -> bool:
        return "; 0 running" in log_file.read_text(errors="replace")[before:]

    body = {"model": MODEL, "stream": True, "temperature": 0, "max_tokens": 2000,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon who learns to bake."}]}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{ov_deployment['api_base']}/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            seen = 0
            for line in resp.iter_lines():
                seen += line.startswith("data: {")
                if seen >= 3:
                    break  # leave mid-stream: the connection closes here
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not cancelled():
            time.sleep(0.2)
        assert cancelled()
        health = httpx.get(f"{ov_deployment['worker']}/health", headers=ov_deployment["auth"], timeout=5).json()
        assert health["queue_length"] == 0
        r = http.post(f"{ov_deployment['api_base']}/completions", timeout=60,
                      json={"model": MODEL, "prompt": "Hello", "temperature": 0, "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


@pytest.mark.slow
@pytest.mark.openvino
def test_greedy_answer_matches_the_transformers_engine(client):
    from orchestr.config.serving import EngineConfig
    from orchestr.engine.engine import Engine

    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    ov_words = r.choices[0].message.content.split()
    engine = Engine.from_pretrained("embedded://SmolLM2-135M-Instruct", EngineConfig(max_batch_size=1),
                                    device="cpu", dtype="bfloat16", threads=1).start()
    try:
        req = GenerateRequest(model=MODEL, messages=QUESTION, temperature=0, max_new_tokens=24)
        hf_words = asyncio.run(engine.generate(req)).text.split()
    finally:
        engine.shutdown()
    assert ov_words[:AGREE_WORDS] == hf_words[:AGREE_WORDS], (ov_words, hf_words)


# --------------------------------------------------------------------------- bench serve's OpenVINO target


def test_openvino_bench_target_parses_its_settings():
    from orchestr.benchmark.openvino_inprocess import parse_settings
    from orchestr.benchmark.servers import BenchError, BenchOptions, OpenVinoInProcessServer, parse_target

    server = parse_target("ovip=openvino:threads=2 kv_cache_tokens=4096", BenchOptions())
    assert isinstance(server, OpenVinoInProcessServer) and server.name == "ovip"
    assert parse_settings(server.args)["threads"] == 2 and parse_settings("")["dtype"] == "bfloat16"
    with pytest.raises(BenchError, match="unknown setting 'treads=2'"):
        parse_target("openvino:treads=2", BenchOptions()).start()


@pytest.mark.slow
@pytest.mark.openvino
def test_openvino_in_process_target_runs_a_level():
    reason = _openvino_reason()
    if reason:
        pytest.skip(reason)
    from orchestr.benchmark.servers import BenchOptions, parse_target

    server = parse_target("openvino:max_batch_size=4 kv_cache_tokens=4096", BenchOptions(log=lambda _m: None))
    try:
        (ep,) = server.start()
        level = ep.local.run_level(concurrency=2, num_requests=3, max_tokens=8, count_tokens=lambda t: len(t.split()),
                                   rss_pids=ep.pids)
    finally:
        server.stop()
    assert ep.protocol == "inprocess" and level.completed == 3 and level.failed == 0
    assert level.output_tokens > 3 and level.ttft_p50_s is not None and level.peak_rss_mb["bench+openvino"] > 100
