"""The running deployment is the context of the day-2 commands (issue 28).

The session's shared deployment (tests/conftest.py) was launched with a non-default web log
folder, its own ports and a second worker (cluster=local_arena). Votes are cast through the web
UI's own HTTP backend (gradio_client, the events the browser fires); then `orchestr clean`,
`orchestr eval eval.answer.backend=api`, `orchestr train train=dpo` and `orchestr test-message`
run with none of the launch's overrides repeated and must act on that deployment.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from orchestr.launch.context import merge, recorded_overrides
from tests.conftest import ORCHESTR, REPO

VOTE_TYPES = ("leftvote", "rightvote", "tievote", "bothbad_vote")
USING = "using the running deployment"


def test_recorded_overrides_leave_out_secrets_and_the_launchers_own_keys() -> None:
    given = ["cluster=local_arena", "services.api.port=9", "services.api.api_keys=[sk-x]", "launch.detach=true",
             "+services.web.auth=[u:p]", "launch.secret=s", "hydra.run.dir=x", "services.web.log_dir=/v"]
    assert recorded_overrides(given) == ["cluster=local_arena", "services.api.port=9", "services.web.log_dir=/v"]


def test_an_override_given_wins_and_a_group_choice_drops_the_keys_below_it() -> None:
    recorded = ["cluster=local_arena", "cluster.workers.worker-1.port=5", "services.api.port=9", "model=a"]
    assert merge(recorded, ["services.api.port=10", "-m"]) == [
        "cluster=local_arena", "cluster.workers.worker-1.port=5", "model=a", "services.api.port=10", "-m"]
    assert merge(recorded, ["cluster=local"]) == ["services.api.port=9", "model=a", "cluster=local"]
    assert merge(recorded, ["+model=b"]) == ["cluster=local_arena", "cluster.workers.worker-1.port=5",
                                             "services.api.port=9", "+model=b"]


def _run(deployment, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORCHESTR_STATE_FILE": str(deployment.state_file),
           "ORCHESTR_RUNS_DIR": str(cwd / "runs"), "PYTHONPATH": str(REPO)}
    return subprocess.run([*ORCHESTR, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _votes_in(folder: Path) -> int:
    n = 0
    for f in folder.glob("*-conv.json"):
        for line in f.read_text().splitlines():
            try:
                n += json.loads(line).get("type") in VOTE_TYPES
            except ValueError:
                continue
    return n


def cast_anonymous_votes(web_url: str, n: int) -> None:
    """Anonymous battles through the web UI's HTTP backend: send, then vote for model A."""
    from gradio_client import Client

    for i in range(n):
        client = Client(web_url, verbose=False)  # a session of its own: one battle each
        client.predict(f"Name a colour, please ({i}).", 0.7, 1.0, 12, api_name="/on_send")
        thanks = client.predict(api_name="/handler")[0]
        assert "Thanks for voting" in thanks, thanks
        client.close()


@pytest.fixture(scope="module")
def voted(deployment) -> int:
    cast_anonymous_votes(deployment.web_url, 3)
    return _votes_in(deployment.web_log_dir)


def test_clean_reads_the_deployments_web_log_folder(deployment, voted, tmp_path: Path) -> None:
    out = _run(deployment, "clean", f"clean.output_dir={tmp_path / 'clean'}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stderr.splitlines() if USING in x)
    assert str(deployment.web_log_dir) in line
    battles = json.loads((tmp_path / "clean" / "clean_battle.json").read_text())
    assert voted >= 3 and len(battles) >= 3
    assert f"read {_votes_in(deployment.web_log_dir)}," in out.stdout  # every vote line of its folder


def test_an_explicit_log_folder_still_wins(deployment, voted, tmp_path: Path) -> None:
    empty = tmp_path / "none"
    empty.mkdir()
    out = _run(deployment, "clean", "step=battles", f"battles.log_dirs=[{empty}]",
               f"clean.output_dir={tmp_path / 'clean'}", cwd=tmp_path)
    assert "#battles: 0" in out.stdout or "no votes" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert "web UI logs" not in out.stderr  # the deployment's folder is not added


def test_eval_answers_through_the_deployments_api(deployment, tmp_path: Path) -> None:
    out = _run(deployment, "eval", "eval.answer.backend=api", "eval.step=answer", "eval.answer.question_end=1",
               "eval.answer.max_tokens=8", f"eval.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stderr.splitlines() if USING in x)
    assert deployment.api_base in line and "cluster=local_arena" in line
    answers = list((tmp_path / "data").rglob("model_answer/*.jsonl"))
    assert len(answers) == 1 and answers[0].read_text().strip()


def test_train_dpo_takes_its_pairs_from_the_deployments_votes(deployment, voted, tmp_path: Path) -> None:
    out = _run(deployment, "train", "train=dpo", "train.max_steps=1", "train.data_opts.eval_fraction=0",
               f"train.output_dir={tmp_path / 'dpo'}", cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stderr.splitlines() if USING in x)
    assert f"arena votes of its web UIs ({deployment.web_log_dir})" in line
    assert (tmp_path / "dpo").is_dir() and any((tmp_path / "dpo").iterdir())


def test_test_message_reaches_the_deployments_controller(deployment, tmp_path: Path) -> None:
    out = _run(deployment, "test-message", "--max-new-tokens", "4", "--message", "Hi", cwd=tmp_path, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert deployment.controller_url in next(x for x in out.stderr.splitlines() if USING in x)


def test_no_deployment_ignores_the_record(deployment, tmp_path: Path) -> None:
    out = _run(deployment, "clean", "--no-deployment", "step=battles", f"battles.log_dirs=[{tmp_path}]",
               f"clean.output_dir={tmp_path / 'clean'}", cwd=tmp_path)
    assert USING not in out.stderr
