"""`orchestr bench serve`: figures and target parsing (fast); real runs against the shared
deployment's API server and worker, and a comparison with a launched orchestr deployment (slow).
Nothing here is timed: the checks are on what the benchmark measures and writes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from orchestr.benchmark.client import RequestRecord, _parse_ndjson, _parse_sse
from orchestr.benchmark.prompts import PROMPTS, prompt_messages
from orchestr.benchmark.servers import (
    BenchError,
    BenchOptions,
    OrchestrServer,
    UrlServer,
    VllmServer,
    parse_target,
)
from orchestr.benchmark.stats import percentile, summarise
from tests.conftest import ORCHESTR, REPO
from tests.judge_server import JudgeServer

# --------------------------------------------------------------------------- pure parts


def test_prompt_set_is_fixed_mixed_and_cycles():
    assert len(PROMPTS) == 8
    lengths = sorted(len(p) for p in PROMPTS)
    assert lengths[-1] > 4 * lengths[0]  # mixed lengths
    assert prompt_messages(3) == prompt_messages(11) == [{"role": "user", "content": PROMPTS[3]}]


def test_percentiles():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_summary_counts_only_completed_requests():
    recs = [RequestRecord(index=0, start=0.0, end=2.0, first_token=0.5, text="a", ok=True, output_tokens=10),
            RequestRecord(index=1, start=0.0, end=4.0, first_token=1.5, text="b", ok=True, output_tokens=30),
            RequestRecord(index=2, start=0.0, end=1.0, ok=False, error="HTTP 500: boom")]
    r = summarise(4, recs, duration_s=4.0)
    assert (r.requests, r.completed, r.failed, r.output_tokens) == (3, 2, 1, 40)
    assert r.output_tok_s == 10.0 and r.req_s == 0.5 and r.mean_output_tokens == 20.0
    assert r.ttft_p50_s == 1.0 and r.latency_p50_s == 3.0 and r.errors == ["HTTP 500: boom"]


def test_stream_line_parsers():
    assert _parse_sse('data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}') == ("Hi", None)
    assert _parse_sse("data: [DONE]") == (None, None)
    assert _parse_sse(": keep-alive") == (None, None)
    assert _parse_sse('data: {"error":{"message":"bad model"}}') == (None, "bad model")
    assert _parse_ndjson('{"text":"lo","error_code":0}') == ("lo", None)
    assert _parse_ndjson('{"text":"","error_code":40301,"error":"unknown"}') == (None, "unknown")


def test_target_specs():
    opts = BenchOptions()
    t = parse_target("http://127.0.0.1:8000/v1", opts)
    assert isinstance(t, UrlServer) and t.kind == "url" and t.name == "http://127.0.0.1:8000/v1"
    t = parse_target("direct=worker:http://127.0.0.1:21002", opts)
    assert isinstance(t, UrlServer) and (t.name, t.kind) == ("direct", "worker")
    t = parse_target("unbatched=orchestr:engine.batching=false model.dtype=float32", opts)
    assert isinstance(t, OrchestrServer) and t.name == "unbatched"
    assert t.args == "engine.batching=false model.dtype=float32"
    t = parse_target("orchestr:model.dtype=bfloat16", opts)
    assert isinstance(t, OrchestrServer) and t.name == "orchestr"
    t = parse_target("vllm", opts)
    assert isinstance(t, VllmServer) and t.name == "vllm" and t.args == ""
    with pytest.raises(BenchError, match="unknown kind"):
        parse_target("sglang:--foo", opts)


def test_bad_command_lines_are_one_line_errors():
    for argv, msg in ((["bench", "serve"], "--base-url URL or at least one --target"),
                      (["bench", "serve", "--target", "nope:x"], "unknown kind"),
                      (["bench", "run"], "unknown benchmark"),
                      (["bench", "serve", "--base-url", "http://x/v1", "--concurrency", "1,a"], "comma-separated")):
        proc = subprocess.run([*ORCHESTR, *argv], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode != 0 and msg in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_unreachable_server_is_reported_not_raised(tmp_path):
    out = tmp_path / "b.json"
    proc = subprocess.run([*ORCHESTR, "bench", "serve", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                           "--warmup", "0", "--concurrency", "2", "--num-requests", "2", "--no-progress",
                           "-o", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    level = json.loads(out.read_text())["results"]["http://127.0.0.1:9/v1"]["levels"][0]
    assert level["failed"] == 2 and level["completed"] == 0 and "ConnectError" in level["errors"][0]


@pytest.mark.parametrize(("sig", "background"), [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["SIGINT-background-job", "SIGTERM"])
def test_a_signal_stops_a_hung_level_and_keeps_the_finished_figures(tmp_path, sig, background):
    judge = JudgeServer()  # an OpenAI-compatible server that streams; here: hangs mid-stream after 5 requests
    judge.fast, judge.hang = 5, "mid"
    out = tmp_path / "b.json"
    cmd = [*ORCHESTR, "bench", "serve", "--base-url", judge.url, "--warmup", "0", "--concurrency", "1,2",
           "--num-requests", "4", "--no-progress", "-o", str(out)]
    # a background job of a shell without job control starts with SIGINT ignored
    cmd = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd] if background else cmd
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while judge.calls < 7:  # level 1: four requests; level 2: one answered, two hanging mid-stream
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{judge.calls} requests in 300 s"
            time.sleep(0.05)
        proc.send_signal(sig)
        t0 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        proc.kill()
        judge.close()
    assert took < 10 and proc.returncode == 128 + sig, (took, proc.returncode, stderr)
    assert f"interrupted ({sig.name}) at {judge.url} c=2 (1 of 4 requests done); levels finished: {judge.url} c=1" \
        in stderr and "rerun with --concurrency" in stderr and "Traceback" not in stderr, stderr
    report = json.loads(out.read_text())
    levels = report["results"][judge.url]["levels"]
    assert [(lv["concurrency"], lv["completed"], lv.get("interrupted", False)) for lv in levels] == \
        [(1, 4, False), (2, 1, True)]
    assert report["interrupted"]["signal"] == sig.name


# --------------------------------------------------------------------------- against real servers


@pytest.mark.slow
def test_levels_against_the_api_and_the_worker_directly(deployment, tmp_path):
    """Two targets of one running deployment: its API server and its worker; JSON and ratios."""
    out = tmp_path / "bench.json"
    worker = f"http://127.0.0.1:{deployment.ports['worker-0']}"
    proc = subprocess.run([*ORCHESTR, "bench", "serve", "--target", f"api=url:{deployment.api_base}",
                           "--target", f"direct=worker:{worker}", "--model", "smollm2-135m",
                           "--concurrency", "1,3", "--num-requests", "3", "--max-tokens", "16", "--warmup", "1",
                           "--no-progress", "-o", str(out)], capture_output=True, text=True, timeout=900, cwd=REPO,
                          env=deployment.secret_env())  # the worker wants the deployment's secret
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["load"]["max_tokens"] == 16 and report["load"]["prompts"] == 8
    assert set(report["results"]) == {"api", "direct"}
    for name, res in report["results"].items():
        assert res["model"] == "smollm2-135m"
        assert [lv["concurrency"] for lv in res["levels"]] == [1, 3]
        for lv in res["levels"]:
            assert lv["completed"] == lv["requests"] == 3 and lv["failed"] == 0, (name, lv)
            # every answer re-tokenised: between 1 and max_tokens (+1 for merges at the end)
            assert 3 <= lv["output_tokens"] <= 3 * 17
            assert lv["output_tok_s"] > 0 and lv["req_s"] > 0
            assert 0 < lv["ttft_p50_s"] <= lv["latency_p50_s"] and lv["ttft_p50_s"] <= lv["ttft_p99_s"]
    # greedy decoding, same prompts: the API and the worker produced the same amount of text
    api_tokens = [lv["output_tokens"] for lv in report["results"]["api"]["levels"]]
    direct_tokens = [lv["output_tokens"] for lv in report["results"]["direct"]["levels"]]
    assert api_tokens == direct_tokens
    assert report["baseline"] == "api" and report["ratios"]["api"] == {"1": 1.0, "3": 1.0}
    assert report["ratios"]["direct"]["3"] > 0
    assert "output tokens/s" in proc.stdout and "direct" in proc.stdout


@pytest.mark.slow
def test_counts_tokens_with_the_models_tokenizer(deployment):
    from transformers import AutoTokenizer

    from orchestr.benchmark.cli import load_counter
    from orchestr.benchmark.runner import run_level
    from orchestr.engine.loader import resolve_model_path

    count = load_counter("embedded://SmolLM2-135M-Instruct")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded://SmolLM2-135M-Instruct"))
    text = "Once upon a time, in a lighthouse far away"
    assert count(text) == len(tok(text, add_special_tokens=False)["input_ids"]) and count("") == 0
    res = run_level(protocol="openai", base_url=deployment.api_base, model="smollm2-135m", concurrency=2,
                    num_requests=2, max_tokens=12, count_tokens=count, progress=False)
    assert res.completed == 2 and 2 <= res.output_tokens <= 26
    # the server's refusal is a failed request with its status and message, not an exception
    bad = run_level(protocol="openai", base_url=deployment.api_base, model="no-such-model", concurrency=1,
                    num_requests=1, max_tokens=4, count_tokens=count, progress=False)
    assert bad.completed == 0 and bad.errors[0].startswith("HTTP 404") and "no-such-model" in bad.errors[0]


@pytest.mark.slow
def test_launches_an_orchestr_target_and_its_worker_and_stops_it(tmp_path):
    """The comparison mode's own launch: `orchestr launch` on free ports, API and worker measured,
    everything stopped afterwards."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([*ORCHESTR, "bench", "serve", "--target", "small=orchestr:model.dtype=float32",
                           "--direct-worker", "--concurrency", "2", "--num-requests", "2", "--max-tokens", "8",
                           "--warmup", "1", "--no-progress", "-o", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"small", "small/worker"}
    api, worker = report["results"]["small"], report["results"]["small/worker"]
    assert api["protocol"] == "openai" and worker["protocol"] == "worker"
    assert api["levels"][0]["completed"] == 2 and worker["levels"][0]["completed"] == 2
    # the worker's memory was sampled while it served
    assert api["levels"][0]["peak_rss_mb"]["worker-0"] > 100
    # stopped: nothing listens on the recorded API address any more
    import httpx

    with pytest.raises(httpx.HTTPError):
        httpx.get(api["base_url"] + "/models", timeout=3)


def test_report_renders_rows_and_ratios(tmp_path):
    level = {"concurrency": 16, "output_tok_s": 200.0, "ttft_p50_s": 0.5, "failed": 0,
             "peak_rss_mb": {"controller": 50.0, "worker-0": 1024.0}}
    report = {"results": {"a": {"levels": [level]}, "b": {"levels": [{**level, "output_tok_s": 100.0}]}},
              "baseline": "b", "ratios": {"a": {"16": 2.0}, "b": {"16": 1.0}}}
    f = tmp_path / "r.json"
    f.write_text(json.dumps(report))
    proc = subprocess.run([sys.executable, "-m", "orchestr.benchmark.report", str(f),
                           "--levels", "1,16"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "| a | — | 200.0 | 0.50 s | 1.00 GB (worker-0) |" in proc.stdout
    assert "- a / b: c=16: 2.00x (r.json)" in proc.stdout
