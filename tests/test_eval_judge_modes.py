"""Judge modes against a deterministic test judge on loopback that counts requests: arena-hard win
rates and intervals against a hand computation, zero requests on re-runs (cache and resume, FastChat
pair files included), the budget cap, and non-zero exits for unfinished steps (fast: no model)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from orchestr.config import compose
from orchestr.eval import paths
from orchestr.eval.judge import run_judge
from orchestr.eval.records import JsonlAppender, answer_record, read_jsonl
from orchestr.eval.results import run_results
from tests.judge_server import JudgeServer

QUESTIONS = range(1, 9)  # the embedded mini bench
BASE_Q = 2
MODEL_Q = [4, 3, 1, 1, 2, 2, 2, 0]  # the judged model's quality on questions 1..8


@pytest.fixture
def judge():
    server = JudgeServer()
    yield server
    server.close()


def write_answers(data: Path, model: str, qualities: list[int]) -> None:
    with JsonlAppender(paths.answer_file(str(data), "orchestr_mini", model)) as sink:
        for qid, q in zip(QUESTIONS, qualities, strict=True):
            sink.append(answer_record(qid, model, [[f"{model} says Q{q}", f"{model} again Q{q}"]]))


def cfg_for(data: Path, judge: JudgeServer, *extra: str):
    return compose([f"eval.data_dir={data}", f"judge.endpoint={judge.url}", f"judge.model={judge.model}",
                    "judge.backend=api", "judge.parallel=1", *extra])


def test_arena_hard_win_rates_intervals_flip_rate_and_lc(tmp_path: Path, judge: JudgeServer, capsys) -> None:
    write_answers(tmp_path, "base", [BASE_Q] * 8)
    write_answers(tmp_path, "m", MODEL_Q)
    write_answers(tmp_path, "perfect", [4] * 8)
    judge.bias_a = True  # equal answers go to whoever is shown first
    cfg = cfg_for(tmp_path, judge, "judge.mode=arena-hard", "judge.baseline_model=base", "eval.plot=false")
    counts = run_judge(cfg)
    assert (counts.done, counts.failed, counts.unparseable) == (16, 0, 0)
    assert judge.calls == 32  # two position orders per question and model
    rec = read_jsonl(paths.judgment_file(str(tmp_path), "orchestr_mini", judge.model, kind="arena_hard"))
    assert {r["baseline"] for r in rec} == {"base"} and all(len(r["games"]) == 2 for r in rec)

    written = run_results(cfg)
    out = capsys.readouterr().out
    table = __import__("pandas").read_csv(written["table"], index_col="model")
    # By hand, the model's scores per question (game 1: baseline shown as A, game 2: model as A):
    # Q4 vs Q2: A>>B both ways -> 3 + 3 wins; Q3: A>B -> 2 wins; Q1 twice: 2 + 2 losses;
    # Q2 three times: biased judge gives A the tie -> one loss, one win each; Q0: >> -> 3 + 3 losses.
    scores = [1.0] * 6 + [1.0] * 2 + [0.0] * 4 + [0.0, 1.0] * 3 + [0.0] * 6
    assert table.loc["m", "games"] == len(scores) == 24
    assert table.loc["m", "win_rate"] == pytest.approx(np.mean(scores))  # 11/24
    # The interval: the 5th and 95th percentiles of 100 resampled means (seed 0), as documented.
    rng = np.random.default_rng(0)
    s = np.array(scores)
    means = s[rng.integers(0, len(s), (100, len(s)))].mean(axis=1)
    assert table.loc["m", "ci_lower"] == pytest.approx(np.quantile(means, 0.05))
    assert table.loc["m", "ci_upper"] == pytest.approx(np.quantile(means, 0.95))
    assert table.loc["m", "ci_lower"] < 11 / 24 < table.loc["m", "ci_upper"]
    # Always strongly better: every score 1, a zero-width interval.
    assert table.loc["perfect", ["win_rate", "ci_lower", "ci_upper"]].tolist() == [1.0, 1.0, 1.0]
    # Equal answer lengths: the length-controlled win rate is the raw one.
    assert table.loc["m", "lc_win_rate"] == pytest.approx(11 / 24, abs=1e-4)
    # 3 of 16 records flip (the m-vs-base ties); printed with the table.
    assert "position-flip rate: 18.8%" in out and "lc_win_rate" in out
    cats = __import__("pandas").read_csv(written["categories"], index_col="category")
    assert cats.loc["writing", "m"] == 1.0 and cats.loc["math", "m"] == 0.0


@pytest.mark.parametrize("mode", ["single", "pairwise-all", "pairwise-baseline", "arena-hard"])
def test_rerun_makes_zero_judge_requests(tmp_path: Path, judge: JudgeServer, mode: str) -> None:
    write_answers(tmp_path, "base", [BASE_Q] * 8)
    write_answers(tmp_path, "m", MODEL_Q)
    cfg = cfg_for(tmp_path, judge, f"judge.mode={mode}", "judge.baseline_model=base")
    first = run_judge(cfg)
    assert first.done > 0 and first.failed == 0
    n = judge.calls
    again = run_judge(cfg)  # resume: everything is in the judgment file
    assert (again.done, again.skipped, judge.calls) == (0, first.done, n)
    out = paths.judgment_file(str(tmp_path), "orchestr_mini", judge.model,
                              kind={"single": "single", "arena-hard": "arena_hard"}.get(mode, "pair"))
    out.unlink()
    third = run_judge(cfg)  # the judgment file is gone: the cache answers, still no request
    assert third.done == first.done and judge.calls == n
    assert len(read_jsonl(out)) == first.done


def test_fastchat_pair_file_resumes_without_rejudging_or_double_counting(tmp_path: Path, judge: JudgeServer,
                                                                         capsys) -> None:
    write_answers(tmp_path, "a", [3] * 8)
    write_answers(tmp_path, "b", [1] * 8)
    out = paths.judgment_file(str(tmp_path), "orchestr_mini", judge.model, pairwise=True)
    out.parent.mkdir(parents=True)
    # Pair records as FastChat writes them in a pairwise-all run over (b, a): names in the other order,
    # and, as in FastChat's older files, no `turn` (the prompt name says which turn).
    with out.open("w") as f:
        for qid in QUESTIONS:
            for prompt in ("pair-v2", "pair-v2-multi-turn"):
                if qid in (3, 4, 5):
                    prompt = prompt.replace("pair-v2", "pair-math-v1")
                f.write(json.dumps({"question_id": qid, "model_1": "b", "model_2": "a", "g1_winner": "model_2",
                                    "g2_winner": "model_2", "judge": [judge.model, prompt], "g1_user_prompt": "",
                                    "g1_judgment": "[[B]]", "g2_user_prompt": "", "g2_judgment": "[[A]]",
                                    "tstamp": 1.0}) + "\n")
    cfg = cfg_for(tmp_path, judge, "judge.mode=pairwise-all", "eval.plot=false")
    counts = run_judge(cfg)
    assert (counts.done, counts.skipped, judge.calls) == (0, 16, 0)
    written = run_results(cfg)
    table = __import__("pandas").read_csv(written["table"], index_col="model")
    assert table.loc["a", ["win", "loss", "tie"]].tolist() == [16, 0, 0]
    assert table.loc["b", ["win", "loss", "tie"]].tolist() == [0, 16, 0]
    assert "INCOMPLETE" not in capsys.readouterr().out


def test_results_name_the_missing_matches(tmp_path: Path, judge: JudgeServer, capsys) -> None:
    write_answers(tmp_path, "m", MODEL_Q)
    cfg = cfg_for(tmp_path, judge, "judge.first_n=2", "eval.plot=false")
    run_judge(cfg)
    cfg.judge.first_n = None
    run_results(cfg)
    out = capsys.readouterr().out
    assert "INCOMPLETE: 12 of 16 matches have no judgment (question 3 turn 1 m" in out


def test_budget_stops_the_run_cleanly_and_keeps_what_finished(tmp_path: Path, judge: JudgeServer) -> None:
    write_answers(tmp_path, "m", MODEL_Q)
    # 1000 prompt tokens at 1.0 + 100 completion tokens at 10.0 per million: 0.002 per request.
    prices = ["judge.price_input_per_mtok=1.0", "judge.price_output_per_mtok=10.0"]
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "orchestr", "eval", "eval.step=judge", f"eval.data_dir={tmp_path}",
           f"judge.endpoint={judge.url}", f"judge.model={judge.model}", "judge.backend=api", "judge.parallel=1",
           *prices]
    out = subprocess.run([*cmd, "judge.budget=0.005"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "judge.budget=0.005 reached" in out.stderr and "rerun the same command" in out.stderr
    assert "cost 0.0060 of budget 0.005" in out.stdout  # three requests: stops at the first one past the cap
    judged = read_jsonl(paths.judgment_file(str(tmp_path), "orchestr_mini", judge.model))
    assert len(judged) == judge.calls == 3
    out = subprocess.run([*cmd, "judge.budget=1.0"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert judge.calls == 16 and len(read_jsonl(paths.judgment_file(str(tmp_path), "orchestr_mini", judge.model))) == 16


def test_corrupt_judgment_lines_are_named_and_can_be_moved_aside(tmp_path: Path, judge: JudgeServer) -> None:
    write_answers(tmp_path, "m", MODEL_Q)
    cfg = cfg_for(tmp_path, judge, "judge.first_n=2")
    run_judge(cfg)
    out = paths.judgment_file(str(tmp_path), "orchestr_mini", judge.model)
    lines = out.read_text().splitlines()
    out.write_text("\n".join([lines[0], '{"question_id": 1, "mod', *lines[1:]]) + "\n")
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")}
    base = [sys.executable, "-m", "orchestr", "eval", "eval.step=results", f"eval.data_dir={tmp_path}",
            f"judge.model={judge.model}", "judge.first_n=2", "eval.plot=false"]
    res = subprocess.run(base, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and f"1 corrupt line(s) in {out}: {out}:2" in res.stderr, res.stderr
    res = subprocess.run([*base, "eval.quarantine_corrupt=true"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert len(read_jsonl(out)) == 4 and out.with_name(out.name + ".corrupt").read_text().startswith('{"question_id": 1')


# As CI and scripts often run the suite: a background job of a shell without job control, which
# starts every process with SIGINT ignored (then Python never raises KeyboardInterrupt by itself).
AS_BACKGROUND_JOB = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]


def _start_eval(data: Path, *overrides: str, background: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestr", "eval", f"eval.data_dir={data}", *overrides]
    return subprocess.Popen([*AS_BACKGROUND_JOB, *cmd] if background else cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "ORCHESTR_RUNS_DIR": str(data / "runs")})


def _stop(proc: subprocess.Popen, sig: int) -> tuple[float, str]:
    """Send `sig`; seconds until the process has exited, and its stderr."""
    proc.send_signal(sig)
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"still running 60 s after {signal.Signals(sig).name}; stderr:\n{err[-3000:]}")
    return time.monotonic() - t0, err


def _wait_for_calls(judge: JudgeServer, proc: subprocess.Popen, n: int) -> None:
    deadline = time.monotonic() + 120
    while judge.calls < n:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"the judge got {judge.calls} requests in 120 s"
        time.sleep(0.05)


# (step, judge mode, how the judge hangs, signal, started as a background job, records finished before
# the hang). The judge answers three requests, then every request hangs; with two workers, the 5th
# request starts after the finished records were handed over (single: 3; two requests per record: 1).
STOP_CASES = [
    ("judge", "single", "before", signal.SIGINT, True, 3),  # CI's failure: SIGINT ignored by the shell
    ("judge", "single", "before", signal.SIGINT, False, 3),
    ("judge", "pairwise-all", "mid", signal.SIGTERM, False, 1),  # hung mid-response
    ("judge", "arena-hard", "retry", signal.SIGINT, True, 1),  # asleep before a retry (Retry-After)
    ("answer", None, "mid", signal.SIGTERM, True, 1),  # two turns: two requests per answer
]


@pytest.mark.parametrize(("step", "mode", "hang", "sig", "background", "finished"), STOP_CASES,
                         ids=[f"{c[0]}-{c[1] or ''}-{c[2]}-{c[3].name}{'-bg' if c[4] else ''}" for c in STOP_CASES])
def test_ctrl_c_stops_within_seconds_and_keeps_finished_judgments(tmp_path: Path, judge: JudgeServer, step: str,
                                                                  mode: str | None, hang: str, sig: signal.Signals,
                                                                  background: bool, finished: int) -> None:
    judge.fast, judge.hang, judge.slow_s = 3, hang, 60.0
    if step == "judge":
        write_answers(tmp_path, "m", MODEL_Q)
        write_answers(tmp_path, "base", [BASE_Q] * 8)
        overrides = ["eval.step=judge", f"judge.endpoint={judge.url}", f"judge.model={judge.model}",
                     "judge.backend=api", "judge.parallel=2", f"judge.mode={mode}", "judge.baseline_model=base",
                     "judge.models=[m,base]"]
        out = paths.judgment_file(str(tmp_path), "orchestr_mini", judge.model,
                                  kind={"single": "single", "arena-hard": "arena_hard"}.get(mode, "pair"))
    else:
        overrides = ["eval.step=answer", f"eval.answer.endpoint={judge.url}", "eval.answer.backend=api",
                     f"model.name={judge.model}", "eval.answer.parallel=2"]
        out = paths.answer_file(str(tmp_path), "orchestr_mini", judge.model)
    proc = _start_eval(tmp_path, *overrides, background=background)
    _wait_for_calls(judge, proc, 5)  # three answered, two hanging
    took, err = _stop(proc, sig)
    assert took < 10, f"{sig.name} took {took:.1f} s"
    assert proc.returncode == 128 + sig, err
    assert f"interrupted ({sig.name})" in err and "to resume (only what is missing is run), rerun: orchestr eval " \
        f"eval.data_dir={tmp_path} eval.step={step}" in err, err
    assert len(read_jsonl(out)) == finished  # every finished record kept, nothing half-written


def test_ctrl_c_while_connecting_to_a_judge_that_never_accepts(tmp_path: Path) -> None:
    import psutil

    write_answers(tmp_path, "m", MODEL_Q)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    filler = socket.create_connection(srv.getsockname())  # the accept queue is full: connects now hang
    port = srv.getsockname()[1]
    try:
        proc = _start_eval(tmp_path, "eval.step=judge", f"judge.endpoint=http://127.0.0.1:{port}/v1",
                           "judge.model=j", "judge.backend=api", background=True)
        deadline = time.monotonic() + 120
        child = psutil.Process(proc.pid)
        connections = getattr(child, "net_connections", None) or child.connections  # psutil < 6: connections
        while not any(c.status == psutil.CONN_SYN_SENT and c.raddr and c.raddr.port == port
                      for c in connections("tcp")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no connection attempt in 120 s"
            time.sleep(0.05)
        took, err = _stop(proc, signal.SIGINT)
        assert took < 10 and proc.returncode == 130 and "interrupted (SIGINT)" in err, (took, err)
    finally:
        filler.close()
        srv.close()


def test_a_signal_while_a_result_is_saved_is_taken_after_it(tmp_path: Path) -> None:
    """The signal arrives inside on_result (as it can inside the progress bar's update): that result
    is saved all the same, then the run stops with Interrupted and starts nothing more."""
    import threading

    from orchestr import interrupts
    from orchestr.eval.parallel import run_parallel

    saved, started, release = [], [], threading.Event()

    def work(i: int) -> int:
        started.append(i)
        if i > 1:
            release.wait(60)  # the next request hangs
        return i

    def on_result(i: int, value: int) -> None:
        if i == 1:
            signal.raise_signal(signal.SIGINT)  # handled before raise_signal returns
        saved.append(value)

    # Python's own Ctrl-C handler, as in a terminal (a suite run as a background job inherits SIGINT
    # ignored, and run_parallel leaves an ignored signal ignored)
    session = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as stopped:  # (not the session's: the test raised it)
            run_parallel(range(1, 9), work, 1, "items", on_result, lambda i, e: None, ())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler before is back
    finally:
        signal.signal(signal.SIGINT, session)
        release.set()
    assert saved == [1] and started == [1, 2]
    assert isinstance(stopped.value, interrupts.Interrupted) and stopped.value.exit_code == 130


@pytest.mark.parametrize("mode", ["single", "pairwise-all", "arena-hard"])
def test_structured_verdicts_through_response_format(tmp_path: Path, judge: JudgeServer, mode: str) -> None:
    write_answers(tmp_path, "base", [BASE_Q] * 8)
    write_answers(tmp_path, "m", MODEL_Q)
    cfg = cfg_for(tmp_path, judge, f"judge.mode={mode}", "judge.baseline_model=base", "judge.structured=on",
                  "judge.first_n=4")
    counts = run_judge(cfg)
    assert counts.done > 0 and counts.unparseable == 0 and judge.structured == judge.calls
    kind = {"single": "single", "arena-hard": "arena_hard"}.get(mode, "pair")
    records = read_jsonl(paths.judgment_file(str(tmp_path), "orchestr_mini", judge.model, kind=kind))
    if mode == "single":
        assert {r["score"] for r in records if r["model"] == "m"} == {8.0, 6.0, 2.0}  # 2 x quality
        assert json.loads(records[0]["judgment"]) == {"rating": records[0]["score"]}
    elif mode == "arena-hard":
        assert {g["score"] for r in records for g in r["games"]} <= {"A>>B", "A>B", "B>A", "B>>A", "A=B"}
    else:
        assert all(r["g1_winner"] in ("model_1", "model_2", "tie") for r in records)
