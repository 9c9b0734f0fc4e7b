"""Judge requests retry with backoff through a real HTTP server that fails on purpose; requests that
keep failing are counted, not written, and judged on the next run (fast: a stdlib HTTP judge)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestr.config import compose
from orchestr.eval import paths
from orchestr.eval.judge import run_judge
from orchestr.eval.records import JsonlAppender, answer_record, read_jsonl


class FlakyJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge whose every `fail_every`-th request (or all, when 1) answers 503."""

    fail_every = 2
    calls = 0
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # /v1/models
        self._json(200, {"object": "list", "data": [{"id": "flaky", "object": "model", "created": 0, "owned_by": "t"}]})

    def do_POST(self) -> None:  # /v1/chat/completions
        self.rfile.read(int(self.headers["Content-Length"]))
        with FlakyJudge.lock:
            FlakyJudge.calls += 1
            n = FlakyJudge.calls
        if n % FlakyJudge.fail_every == 0 or FlakyJudge.fail_every == 1:
            self._json(503, {"error": {"message": "busy", "type": "server_error", "param": None, "code": 503}})
            return
        self._json(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "flaky",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "Fine. Rating: [[7]]"}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FlakyJudge.calls = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _setup(tmp_path: Path, url: str, retries: int) -> tuple:
    cfg = compose([f"eval.data_dir={tmp_path}", f"judge.endpoint={url}", "judge.model=flaky", "judge.backend=api",
                   f"judge.max_retries={retries}", "judge.first_n=3", "judge.cache=null"])
    with JsonlAppender(paths.answer_file(str(tmp_path), "orchestr_mini", "m")) as sink:
        for qid in (1, 2, 3):
            sink.append(answer_record(qid, "m", [["one", "two"]]))
    return cfg, paths.judgment_file(str(tmp_path), "orchestr_mini", "flaky", pairwise=False)


def test_transient_errors_are_retried(tmp_path: Path, judge_url: str, caplog) -> None:
    import logging

    FlakyJudge.fail_every = 2  # every second request fails
    cfg, out = _setup(tmp_path, judge_url, retries=3)
    with caplog.at_level(logging.INFO, logger="openai"):
        counts = run_judge(cfg)
    assert any("Retrying request" in r.getMessage() for r in caplog.records)  # the SDK's retries, logged
    assert (counts.done, counts.failed, counts.skipped) == (6, 0, 0)
    assert FlakyJudge.calls > 6  # the failed ones were retried
    assert sorted(r["score"] for r in read_jsonl(out)) == [7.0] * 6


def test_persistent_errors_are_counted_then_resumed(tmp_path: Path, judge_url: str) -> None:
    FlakyJudge.fail_every = 1  # the judge is down
    cfg, out = _setup(tmp_path, judge_url, retries=2)
    counts = run_judge(cfg)
    assert (counts.done, counts.failed) == (0, 6) and counts.incomplete
    assert FlakyJudge.calls == 6 * 3  # one try plus two retries each
    assert read_jsonl(out) == []
    FlakyJudge.fail_every = 10**9  # back up
    counts = run_judge(cfg)
    assert (counts.done, counts.failed, counts.skipped) == (6, 0, 0)
    counts = run_judge(cfg)
    assert (counts.done, counts.skipped) == (0, 6)
    assert len(read_jsonl(out)) == 6


def test_a_judge_step_with_failures_exits_non_zero_saying_how_to_resume(tmp_path: Path, judge_url: str) -> None:
    import os
    import subprocess
    import sys

    FlakyJudge.fail_every = 1  # the judge answers /models but fails every request
    _setup(tmp_path, judge_url, retries=0)
    out = subprocess.run([sys.executable, "-m", "orchestr", "eval", "eval.step=judge", f"eval.data_dir={tmp_path}",
                          f"judge.endpoint={judge_url}", "judge.model=flaky", "judge.backend=api",
                          "judge.max_retries=0", "judge.first_n=1", "judge.cache=null"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "judge: 2 of 2 matches failed; rerun the same command" in out.stderr
    assert "Traceback" not in out.stderr
