"""`orchestr bench serve`: figures and target parsing (fast); real runs against the shared
deployment's API server and worker, and a comparison with a launched orchestr deployment (slow).
Nothing here is timed: the checks are on what the benchmark measures and writes."""

from __future__ import annotations

import json
import subprocess
import sys

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
                      (["bench", "serve", "--base-url", "http://x/v1", "--concurrency", "1,a"], "comma-separated"),
                      (["bench", "serve", "--base-url", "http://x/v1", "--workload", "random",
                        "--input-len-dist", "normal:5"], "--input-len-dist"),
                      (["bench", "serve", "--base-url", "http://x/v1", "--workload", "sharegpt"], "needs --dataset"),
                      (["bench", "serve", "--target", "openvino:", "--workload", "hol"], "only the fixed workload"),
                      (["bench", "serve", "--base-url", "http://x/v1", "--workload", "multiturn", "--turns", "0"],
                       "--turns must be >= 1")):
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


def test_report_renders_a_multiturn_table(tmp_path):
    mt = {"wall_s": 12.3, "ttft_turn1_p50_s": 2.5, "ttft_later_p50_s": 0.4, "output_tok_s": 80.0, "failed": 0,
          "prefix_cache": {"queried_tokens": 1000, "hit_tokens": 870, "hit_rate": 0.87}}
    report = {"workload": "multiturn", "baseline": "vllm",
              "results": {"vllm": {"multiturn": mt},
                          "hf": {"multiturn": {**mt, "wall_s": 24.6, "ttft_later_p50_s": None, "failed": 1}}},
              "ratios": {"vllm": {"wall_s": 1.0}, "hf": {"wall_s": 0.5, "ttft_later_p50_s": None}}}
    f = tmp_path / "mt.json"
    f.write_text(json.dumps(report))
    proc = subprocess.run([sys.executable, "-m", "orchestr.benchmark.report", str(f)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "multiturn (mt.json; ratios vs vllm, > 1 is faster)" in proc.stdout
    assert "| vllm | 12.30 s | 2.50 s | 0.40 s | 80.00 | 87% |" in proc.stdout
    assert "| hf (1 failed) | 24.60 s (0.50x) | 2.50 s | — | 80.00 | 87% |" in proc.stdout
    assert "c=16" not in proc.stdout  # no levels table without level files


# --------------------------------------------------------------------------- workloads beside fixed


@pytest.fixture(scope="module")
def count():
    from orchestr.benchmark.cli import load_counter

    return load_counter("embedded://SmolLM2-135M-Instruct")


def test_system_prompt_is_deterministic_english_of_about_the_asked_length(count):
    from orchestr.benchmark.synthetic import system_prompt

    text = system_prompt(950, count, seed=0)
    assert text == system_prompt(950, count, seed=0) != system_prompt(950, count, seed=1)
    assert abs(count(text) - 950) <= 20  # whole sentences: within half a sentence
    assert text.startswith("You are the customer support assistant") and text.endswith(".")
    words = text.replace(".", " ").replace(",", " ").replace(":", " ").split()
    assert all(w.replace("'", "").isalpha() or w.isdigit() for w in words)  # words, not token soup
    assert 500 <= len(words) <= 950 and "Section 3:" in text
    assert abs(count(system_prompt(64, count)) - 64) <= 20


def test_documents_hit_their_token_count_and_user_turns_are_fixed(count):
    from orchestr.benchmark.synthetic import document, user_turn

    for n in (5, 37, 200, 1660):
        assert abs(count(document(n, count, seed=n)) - n) <= 2
    assert document(300, count, seed=4) == document(300, count, seed=4) != document(300, count, seed=5)
    assert user_turn(0, 0) == user_turn(0, 0) and user_turn(0, 0) != user_turn(1, 0)
    assert user_turn(3, 0).startswith("Hello, I have a question about") and user_turn(3, 1) != user_turn(3, 0)


def test_length_distributions():
    import random

    from orchestr.benchmark.lengths import parse_length_dist

    assert parse_length_dist("128").sample(random.Random(0), 3) == [128] * 3
    uni = parse_length_dist("uniform:10:20")
    xs = uni.sample(random.Random(0), 200)
    assert xs == uni.sample(random.Random(0), 200) and min(xs) >= 10 and max(xs) <= 20 and len(set(xs)) > 5
    logn = parse_length_dist("lognormal:200:0.5:600")
    ys = logn.sample(random.Random(1), 500)
    assert 1 <= min(ys) and max(ys) <= 600 and 150 < sorted(ys)[250] < 260  # median near 200
    assert str(logn) == "lognormal:200:0.5:600" and str(parse_length_dist("lognormal:10:1")) == "lognormal:10:1:80"
    for bad in ("", "uniform:5", "uniform:9:3", "lognormal:0:1", "gauss:1:2", "fixed:0", "uniform:a:b"):
        with pytest.raises(ValueError, match="fixed:N, uniform:LO:HI or lognormal"):
            parse_length_dist(bad)


def test_random_workload_lengths_and_poisson_arrivals(count):
    from orchestr.benchmark.lengths import parse_length_dist
    from orchestr.benchmark.workloads import prepare

    opts = {"num_prompts": 40, "input_len_dist": parse_length_dist("uniform:20:300"),
            "output_len_dist": parse_length_dist("uniform:4:64"), "request_rate": 8.0, "seed": 3}
    w = prepare("random", dict(opts), count)
    again = prepare("random", dict(opts), count)
    assert [p for p, _ in w.prompts] == [p for p, _ in again.prompts] and w.arrivals == again.arrivals
    lengths = [count(m[0]["content"]) for m, _ in w.prompts]
    assert all(18 <= n <= 302 for n in lengths) and len(set(lengths)) > 10
    assert all(4 <= o <= 64 for _, o in w.prompts)
    gaps = [b - a for a, b in zip(w.arrivals, w.arrivals[1:], strict=False)]
    assert w.arrivals[0] == 0 and all(g > 0 for g in gaps) and 0.06 < sum(gaps) / len(gaps) < 0.25  # 1/8 s
    assert w.options["input_len_dist"] == "uniform:20:300"
    assert prepare("random", {**opts, "request_rate": None}, count).arrivals is None


def test_hol_long_prompt_has_a_unique_start_and_its_length(count):
    from orchestr.benchmark.workloads import SHORT_CHAT, prepare

    a = prepare("hol", {"long_prompt_tokens": 1660}, count).long_messages
    b = prepare("hol", {"long_prompt_tokens": 1660}, count).long_messages
    # a fresh opening each time, then the same document (its length adjusted to the opening's)
    assert a[0]["content"] != b[0]["content"] and a[1]["content"][:2000] == b[1]["content"][:2000]
    assert abs(sum(count(m["content"]) for m in a) - 1660) <= 4
    assert count(SHORT_CHAT) == 5


def test_sharegpt_file(shared_data, count, tmp_path):
    from orchestr.benchmark.sharegpt import load_sharegpt

    path = shared_data / "fastchat" / "dummy_conversation.json"
    pairs = load_sharegpt(path, count, num_prompts=20, seed=1)
    assert len(pairs) == 20 and pairs == load_sharegpt(path, count, num_prompts=20, seed=1)
    raw = {c["id"]: c["conversations"] for c in json.loads(path.read_text())}
    for p in pairs:
        assert p.prompt == raw[p.id][0]["value"] and p.output_tokens == count(raw[p.id][1]["value"]) > 0
    # a conversation not starting with a human turn, and one too long for max_len, are skipped
    f = tmp_path / "mixed.json"
    f.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Hi"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Tell me a story."},
                                      {"from": "gpt", "value": "Once upon a time " * 20}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"}]}]))
    assert [p.id for p in load_sharegpt(f, count, num_prompts=5, max_len=64 + 30)] == ["c"]


@pytest.mark.parametrize("content,why", [
    ("[{", "not JSON"),
    ('{"id": 1}', "the top level is a dict"),
    ('[{"id": "x", "conversation": []}]', "entry 0 has no list of conversations"),
    ('[{"id": "x", "conversations": [{"from": "human"}]}]', "entry 0 has no list"),
    ('[{"id": "x", "conversations": [{"from": "human", "value": "only a question"}]}]', "no conversation starts"),
])
def test_sharegpt_bad_files_are_clear_errors(content, why, count, tmp_path):
    from orchestr.benchmark.sharegpt import load_sharegpt

    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(BenchError, match=why) as e:
        load_sharegpt(f, count, num_prompts=4)
    assert str(f) in str(e.value) and "ShareGPT format" in str(e.value)
    with pytest.raises(BenchError, match="cannot read it"):
        load_sharegpt(tmp_path / "missing.json", count, num_prompts=4)


def test_bad_dataset_exits_2_before_any_server_is_contacted(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{"conversations": 1}')
    proc = subprocess.run([*ORCHESTR, "bench", "serve", "--base-url", "http://127.0.0.1:9/v1", "--workload",
                           "sharegpt", "--dataset", str(f), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--dataset {f}: the top level is a dict" in proc.stderr


def test_prefix_cache_counters_from_prometheus_text():
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from orchestr.benchmark.prefix_metrics import hit_rate, parse_counters

    reg = CollectorRegistry()
    queries = Counter("vllm:prefix_cache_queries", "q", ["model_name"], registry=reg)
    hits = Counter("vllm:prefix_cache_hits", "h", ["model_name"], registry=reg)
    Counter("vllm:prompt_tokens", "p", ["model_name"], registry=reg).labels("m").inc(7)
    queries.labels("a").inc(100)
    hits.labels("a").inc(10)
    before = parse_counters(generate_latest(reg).decode())
    queries.labels("a").inc(300)
    queries.labels("b").inc(100)  # two engines of a multi-model worker are summed
    hits.labels("b").inc(250)
    after = parse_counters(generate_latest(reg).decode())
    assert (before.queries, before.hits, after.queries, after.hits) == (100, 10, 500, 260)
    assert hit_rate(before, after) == {"queried_tokens": 400, "hit_tokens": 250, "hit_rate": 0.625}
    assert hit_rate(before, before)["hit_rate"] is None and hit_rate(None, after) is None
    # older vLLM names, and a server without the counters
    assert parse_counters("vllm:gpu_prefix_cache_queries_total 8.0\nvllm:gpu_prefix_cache_hits_total 2.0\n") \
        .hits == 2.0
    assert parse_counters('vllm:prompt_tokens_total{model_name="m"} 7.0\n') is None


def test_workload_ratios_are_speedups_vs_the_baseline():
    from orchestr.benchmark.workload_tables import workload_ratios
    from orchestr.benchmark.workloads import _ttfts

    results = {"vllm": {"multiturn": {"wall_s": 12.0, "ttft_turn1_p50_s": 2.5, "ttft_later_p50_s": 0.4,
                                      "output_tok_s": 80.0}},
               "hf": {"multiturn": {"wall_s": 48.0, "ttft_turn1_p50_s": 5.0, "ttft_later_p50_s": None,
                                    "output_tok_s": 20.0}}}
    r = workload_ratios("multiturn", results, "vllm")
    assert r["vllm"] == {"wall_s": 1.0, "ttft_turn1_p50_s": 1.0, "ttft_later_p50_s": 1.0, "output_tok_s": 1.0}
    assert r["hf"] == {"wall_s": 0.25, "ttft_turn1_p50_s": 0.5, "ttft_later_p50_s": None, "output_tok_s": 0.25}
    assert _ttfts("t", [1.0, 2.0, 3.0, 4.0, 5.0]) == {"t_p50_s": 3.0, "t_p90_s": 4.6}
    assert _ttfts("t", []) == {"t_p50_s": None, "t_p90_s": None}


def _bench(deployment, tmp_path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    proc = subprocess.run([*ORCHESTR, "bench", "serve", "--model", "smollm2-135m", "--warmup", "1", "--no-progress",
                           "-o", str(out), *args], capture_output=True, text=True, timeout=900, cwd=REPO,
                          env=deployment.secret_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_multiturn_against_the_api_and_the_worker(deployment, tmp_path, count):
    """2 conversations x 2 turns: every turn resends the system prompt and the history with the
    actual answers (the server's prompt count grows by them); API and worker, ratios, JSON."""
    from orchestr.benchmark.synthetic import user_turn

    worker = f"http://127.0.0.1:{deployment.ports['worker-0']}"
    report, stdout = _bench(deployment, tmp_path, "--workload", "multiturn", "--conversations", "2", "--turns", "2",
                            "--system-prompt-tokens", "64", "--answer-tokens", "8",
                            "--target", f"api=url:{deployment.api_base}", "--target", f"direct=worker:{worker}",
                            "--metrics-url", f"api={worker}/metrics")
    assert report["workload"] == "multiturn" and abs(report["load"]["system_prompt_tokens_actual"] - 64) <= 20
    for name in ("api", "direct"):
        mt = report["results"][name]["multiturn"]
        assert (mt["requests"], mt["completed"], mt["failed"]) == (4, 4, 0), mt
        assert 0 < mt["ttft_turn1_p50_s"] <= mt["ttft_turn1_p90_s"] and 0 < mt["ttft_later_p50_s"] < mt["wall_s"]
        assert 2 <= mt["output_tokens"] <= 4 * 9 and mt["output_tok_s"] > 0
        first, second = mt["per_turn"]
        assert first["prompt_tokens"][0] > 64  # the system prompt and the question, as the server counts
        for conv in range(2):  # turn 2 = turn 1's prompt + the answer + the new question
            grown = second["prompt_tokens"][conv] - first["prompt_tokens"][conv]
            assert grown >= first["output_tokens"][conv] + count(user_turn(conv, 1)), (first, second)
        if "prefix_cache" in mt:  # only where the worker counts prefix-cache lookups
            assert mt["prefix_cache"]["queried_tokens"] > 0 and 0 <= mt["prefix_cache"]["hit_rate"] <= 1
    assert report["baseline"] == "api" and set(report["ratios"]["direct"]) >= {"wall_s", "ttft_later_p50_s"}
    assert "multi-turn conversations" in stdout and "prompt tokens per turn" in stdout


@pytest.mark.slow
def test_head_of_line_probe(deployment, tmp_path):
    report, stdout = _bench(deployment, tmp_path, "--workload", "hol", "--long-prompt-tokens", "200",
                            "--answer-tokens", "8", "--probe-repeats", "2", "--base-url", deployment.api_base)
    hol = report["results"][deployment.api_base]["hol"]
    assert hol["failed"] == 0 and len(hol["short_alone_ttfts_s"]) == 2, hol
    assert 200 <= hol["long_prompt_tokens"] <= 260 and 5 <= hol["short_prompt_tokens"] < 60
    assert hol["short_alone_ttft_s"] > 0 and hol["long_cold_ttft_s"] > 0 and hol["long_repeat_ttft_s"] > 0
    assert hol["slowdown"] == pytest.approx(hol["short_behind_long_ttft_s"] / hol["short_alone_ttft_s"], abs=0.01)
    assert "head-of-line probe" in stdout and "ratios" not in report  # one endpoint: no ratios


@pytest.mark.slow
def test_random_lengths_with_poisson_arrivals(deployment, tmp_path):
    report, stdout = _bench(deployment, tmp_path, "--workload", "random", "--num-requests", "3", "--concurrency", "3",
                            "--input-len-dist", "uniform:20:60", "--output-len-dist", "fixed:6",
                            "--request-rate", "20", "--base-url", deployment.api_base)
    assert report["load"]["input_len_dist"] == "uniform:20:60" and report["load"]["request_rate"] == 20
    level = report["results"][deployment.api_base]["levels"][0]
    assert (level["concurrency"], level["completed"], level["failed"]) == (3, 3, 0), level
    assert level["prompt_tokens_mean"] > 20 and 3 <= level["output_tokens"] <= 3 * 7
    assert level["request_rate"] == 20 and "Poisson arrivals" in stdout


@pytest.mark.slow
def test_sharegpt_prompts(deployment, tmp_path, shared_data):
    report, _ = _bench(deployment, tmp_path, "--workload", "sharegpt", "--num-requests", "3", "--concurrency", "3",
                       "--dataset", str(shared_data / "fastchat" / "dummy_conversation.json"),
                       "--base-url", deployment.api_base)
    assert report["load"]["prompts_used"] == 3 and report["load"]["output_tokens_mean"] > 0
    level = report["results"][deployment.api_base]["levels"][0]
    assert (level["completed"], level["failed"]) == (3, 0) and level["output_tokens"] > 0, level
