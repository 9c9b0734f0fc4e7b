"""`orchestr eval` with no deployment running: `backend=auto` loads the model in-process for the
answer step and, for the default `self` judge, for the judge step too; results print (slow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestr.eval.records import read_jsonl
from tests.conftest import free_port
from tests.test_eval_formats import assert_fastchat_answer, assert_fastchat_single


@pytest.mark.slow
def test_eval_runs_out_of_the_box_without_a_deployment(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "orchestr", "eval", f"services.api.port={free_port()}",  # nothing listens there
           "eval.answer.question_end=1", "eval.answer.max_tokens=8", "eval.answer.num_choices=2",
           "judge.first_n=1"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "loading smollm2-135m in this process (eval.answer.backend=auto)" in out.stdout
    assert "judged 2" in out.stdout and "single-answer grading by smollm2-135m" in out.stdout
    data = tmp_path / "data" / "orchestr_mini"
    records = read_jsonl(data / "model_answer" / "smollm2-135m.jsonl")
    assert len(records) == 1
    assert_fastchat_answer(records[0])
    assert [len(c["turns"]) for c in records[0]["choices"]] == [2, 2]
    assert all(t.strip() for c in records[0]["choices"] for t in c["turns"])
    judgments = read_jsonl(data / "model_judgment" / "smollm2-135m_single.jsonl")
    assert sorted(r["turn"] for r in judgments) == [1, 2]
    for r in judgments:
        assert_fastchat_single(r)
        # the in-process judge answers under the verdict's JSON schema: every verdict parses
        assert json.loads(r["judgment"]) == {"rating": int(r["score"])} and 1 <= r["score"] <= 10
    assert "unparseable" not in out.stdout
    used = re.search(r"judge requests 2 \(\+0 from cache\), tokens (\d+) in / (\d+) out", out.stdout)
    assert used and int(used[1]) > 100 and int(used[2]) > 0, out.stdout  # the in-process judge's tokens
    table = out.stdout.split("single-answer grading by smollm2-135m")[1]
    assert re.search(r"smollm2-135m\s+\d+(\.\d+)?\s+\d+(\.\d+)?\s+\d+(\.\d+)?\s+2\b", table), table
    assert (data / "results" / "smollm2-135m_single.csv").is_file()
