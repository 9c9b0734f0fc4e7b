"""The answer step with the model loaded in-process (`eval.answer.backend=local`): no deployment at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestr.eval.records import read_jsonl
from tests.test_eval_formats import assert_fastchat_answer


@pytest.mark.slow
def test_local_model_answers_the_embedded_bench(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "orchestr", "eval", "eval.step=answer", "eval.answer.backend=local",
           "eval.answer.question_end=1", "eval.answer.max_tokens=8", "eval.answer.num_choices=2",
           "eval.answer.model_id=smollm2-local"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")})
    assert out.returncode == 0, out.stdout + out.stderr
    records = read_jsonl(tmp_path / "data" / "orchestr_mini" / "model_answer" / "smollm2-local.jsonl")
    assert len(records) == 1
    assert_fastchat_answer(records[0])
    assert records[0]["model_id"] == "smollm2-local"
    assert [len(c["turns"]) for c in records[0]["choices"]] == [2, 2]
    assert all(t.strip() for c in records[0]["choices"] for t in c["turns"])
