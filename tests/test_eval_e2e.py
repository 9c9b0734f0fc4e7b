"""`orchestr eval` end to end on the real embedded model, offline, one CLI command per step:

answers to the first MT-bench questions (the shared test copy, via `bench.question_file=`) from both
models of a running `orchestr launch` deployment (the endpoint derived from `services.api.port`),
judgments by the served embedded model in single and pairwise-all modes, results, a Hydra sweep,
resume after a killed run, and the QA browser.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from orchestr.eval.matches import pair_key, single_key
from orchestr.eval.records import read_jsonl
from tests.conftest import free_port
from tests.test_eval_formats import assert_fastchat_answer, assert_fastchat_pair, assert_fastchat_single

pytestmark = pytest.mark.slow

MODELS = ["smollm2-135m", "smollm2-135m-int8"]
N_QUESTIONS = 3
TOKENS = 24  # the model is slow on 2 shared cores: short answers and short judgments


class Eval:
    """Runs `orchestr eval ...` in a scratch folder against the deployment, from config overrides only."""

    def __init__(self, root: Path, api_port: int, shared: Path):
        self.root = root
        mt = shared / "fastchat" / "mt_bench"
        self.base = [
            "bench=mt_bench",
            f"bench.question_file={mt / 'question.jsonl'}",
            f"bench.reference_answer_file={mt / 'reference_answer' / 'gpt-4.jsonl'}",
            f"services.api.port={api_port}",  # the deployment `orchestr launch` started from this config
            f"eval.answer.question_end={N_QUESTIONS}",
            f"eval.answer.max_tokens={TOKENS}",
            f"judge.first_n={N_QUESTIONS}",
            f"judge.max_tokens={TOKENS}",
            "judge.model=smollm2-135m",  # the embedded model, served by orchestr, judges
        ]
        self.env = {**os.environ, "ORCHESTR_RUNS_DIR": str(root / "runs")}

    def argv(self, *overrides: str) -> list[str]:
        flags = [o for o in overrides if o.startswith("-")]  # Hydra's flags (-m) go before the overrides
        rest = [o for o in overrides if not o.startswith("-")]
        return [sys.executable, "-m", "orchestr", "eval", *flags, *self.base, *rest]

    def __call__(self, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
        out = subprocess.run(self.argv(*overrides), cwd=self.root, env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        assert out.returncode == 0, f"orchestr eval {' '.join(overrides)} failed:\n{out.stdout}\n{out.stderr}"
        return out

    def data(self, *parts: str) -> Path:
        return self.root / "data" / "mt_bench" / Path(*parts)


@pytest.fixture(scope="module")
def ev(deployment, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Eval:
    return Eval(tmp_path_factory.mktemp("eval"), deployment.ports["api"], shared_data)


@pytest.fixture(scope="module")
def answered(ev: Eval) -> Eval:
    for model in MODELS:
        out = ev("eval.step=answer", f"model={model}")
        assert f"answered {N_QUESTIONS}, failed 0" in out.stdout
    return ev


def test_answers_in_fastchat_schema(answered: Eval) -> None:
    for model in MODELS:
        records = read_jsonl(answered.data("model_answer", f"{model}.jsonl"))
        assert [r["question_id"] for r in records] == [81, 82, 83]
        for r in records:
            assert_fastchat_answer(r)
            assert r["model_id"] == model
            assert len(r["choices"]) == 1 and len(r["choices"][0]["turns"]) == 2
            assert all(t.strip() for t in r["choices"][0]["turns"])
    # a rerun answers nothing twice
    out = answered("eval.step=answer", f"model={MODELS[0]}")
    assert f"answered 0, failed 0, skipped {N_QUESTIONS}" in out.stdout
    assert len(read_jsonl(answered.data("model_answer", f"{MODELS[0]}.jsonl"))) == N_QUESTIONS


def test_single_judgments_and_results(answered: Eval) -> None:
    out = answered("eval.step=judge", "judge.mode=single")
    expected = N_QUESTIONS * 2 * len(MODELS)  # two turns, two models
    assert f"judged {expected}" in out.stdout and "failed 0" in out.stdout
    assert "unparseable" not in out.stdout  # the deployment judges under the verdict's JSON schema
    records = read_jsonl(answered.data("model_judgment", "smollm2-135m_single.jsonl"))
    assert len(records) == expected
    assert len({single_key(r) for r in records}) == expected
    for r in records:
        assert_fastchat_single(r)
        assert r["judge"][0] == "smollm2-135m" and r["judgment"].strip()
        assert r["judge"][1] == ("single-v1" if r["turn"] == 1 else "single-v1-multi-turn")
    res = answered("eval.step=results", "judge.mode=single")
    assert "single-answer grading by smollm2-135m" in res.stdout
    assert answered.data("results", "smollm2-135m_single.csv").read_text().startswith("model,turn1,turn2,average")
    # FastChat's show_result reads judgments with pandas: so can anyone else
    import pandas as pd

    df = pd.read_json(answered.data("model_judgment", "smollm2-135m_single.jsonl"), lines=True)
    assert len(df) == expected and {"model", "score", "turn"} <= set(df.columns)


def test_pairwise_all_judgments_and_results(answered: Eval) -> None:
    out = answered("eval.step=judge", "judge.mode=pairwise-all")
    expected = N_QUESTIONS * 2  # one model pair, two turns
    assert f"judged {expected}" in out.stdout
    records = read_jsonl(answered.data("model_judgment", "smollm2-135m_pair.jsonl"))
    assert len(records) == expected
    for r in records:
        assert_fastchat_pair(r)
        assert (r["model_1"], r["model_2"]) == tuple(MODELS)
        # both orders were played: the second prompt has the answers swapped
        a1 = r["g1_user_prompt"].split("[The Start of Assistant A's Answer]")[-1]
        b2 = r["g2_user_prompt"].split("[The Start of Assistant B's Answer]")[-1]
        if r["turn"] == 1:
            assert a1.split("[The End")[0] == b2.split("[The End")[0]
    res = answered("eval.step=results", "judge.mode=pairwise-all")
    assert "pairwise (all pairs) by smollm2-135m" in res.stdout
    table = answered.data("results", "smollm2-135m_pairwise-all.csv").read_text()
    assert table.startswith("model,win,loss,tie,win_rate")


def test_resume_after_killing_a_run(answered: Eval) -> None:
    """Kill the judge mid-run, rerun: every match judged exactly once, nothing lost or duplicated."""
    out_file = answered.data("model_judgment", "resume_single.jsonl")
    # no cache: the earlier tests judged these very matches, and the cache would answer them all at once
    args = answered.argv("eval.step=judge", "judge.mode=single", "judge.name=resume", "judge.parallel=2",
                         "judge.cache=null")
    proc = subprocess.Popen(args, cwd=answered.root, env=answered.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while len(read_jsonl(out_file)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: as a crash or an OOM kill would
        proc.wait()
    first = read_jsonl(out_file)
    expected = N_QUESTIONS * 2 * len(MODELS)
    assert 3 <= len(first) < expected, "the run should have been killed half-way"

    out = answered("eval.step=judge", "judge.mode=single", "judge.name=resume")
    assert f"skipped {len(first)}" in out.stdout and f"judged {expected - len(first)}" in out.stdout
    final = read_jsonl(out_file)
    keys = Counter(single_key(r) for r in final)
    assert len(final) == expected and len(keys) == expected and max(keys.values()) == 1
    assert final[: len(first)] == first  # the records of the killed run are kept untouched
    # FastChat's own reader (pandas, lines=True) can read the file after the kill
    import pandas as pd

    assert len(pd.read_json(out_file, lines=True)) == expected
    # and a third run has nothing left to do
    out = answered("eval.step=judge", "judge.mode=single", "judge.name=resume")
    assert f"judged 0, failed 0, skipped {expected}" in out.stdout


def test_sweep_over_models_and_modes(deployment, shared_data: Path, tmp_path: Path) -> None:
    """`orchestr eval -m model=a,b judge.mode=single,pairwise-all`: each job finds the previous one's files."""
    ev = Eval(tmp_path, deployment.ports["api"], shared_data)
    out = ev("-m", f"model={','.join(MODELS)}", "judge.mode=single,pairwise-all",
             "eval.answer.question_end=1", "judge.first_n=1")
    assert out.stdout.count("answers: answered 1") == 2
    single = read_jsonl(ev.data("model_judgment", "smollm2-135m_single.jsonl"))
    pair = read_jsonl(ev.data("model_judgment", "smollm2-135m_pair.jsonl"))
    assert Counter(r["model"] for r in single) == {MODELS[0]: 2, MODELS[1]: 2}
    assert len(pair) == 2 and len({pair_key(r) for r in pair}) == 2
    assert "pairwise (all pairs)" in out.stdout and "single-answer grading" in out.stdout


@pytest.mark.browser
def test_qa_browser_shows_answers_side_by_side_and_judgments(answered: Eval) -> None:
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("needs /usr/bin/chromium (scripts/install_browser.sh)")
    from playwright.sync_api import sync_playwright

    for mode in ("single", "pairwise-all"):  # make sure both judgment files exist
        answered("eval.step=judge", f"judge.mode={mode}")
    port = free_port()
    cmd = [sys.executable, "-m", "orchestr", "qa-browser", "--port", str(port), *answered.base]
    proc = subprocess.Popen(cmd, cwd=answered.root, env=answered.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        answers = {m: read_jsonl(answered.data("model_answer", f"{m}.jsonl"))[0] for m in MODELS}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium")
            page = browser.new_page()
            deadline = time.monotonic() + 120
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except Exception:
                    assert proc.poll() is None and time.monotonic() < deadline, "qa-browser did not start"
                    time.sleep(1)
            page.wait_for_function("document.querySelector('#pair_judgment')?.innerText.includes('Turn 1')",
                                   timeout=60000)
            left, right = page.inner_text("#answer_a"), page.inner_text("#answer_b")
            assert MODELS[0] in left and MODELS[1] in right
            first_words = lambda m: " ".join(answers[m]["choices"][0]["turns"][0].split()[:3])  # noqa: E731
            assert first_words(MODELS[0]) in " ".join(left.split())
            assert first_words(MODELS[1]) in " ".join(right.split())
            judgment = page.inner_text("#pair_judgment")
            assert "Game 1" in judgment and "Game 2" in judgment and "pair-v2" in judgment
            page.get_by_role("tab", name="Single").click()
            page.wait_for_function("document.querySelector('#single_judgment')?.innerText.includes('score')",
                                   timeout=30000)
            page.screenshot(path=str(answered.root / "qa_browser.png"))
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

