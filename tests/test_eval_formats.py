"""Eval files in FastChat's exact formats, bench/prompt loading, results and agreement maths,
durable appends, and clear errors for user mistakes (fast: no model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestr.config import compose
from orchestr.eval import paths
from orchestr.eval.agreement import run_agreement
from orchestr.eval.bench import load_judge_prompts, load_questions, load_references
from orchestr.eval.errors import EvalError
from orchestr.eval.matches import build_matches
from orchestr.eval.records import (
    JsonlAppender,
    answer_record,
    pair_judgment_record,
    read_jsonl,
    single_judgment_record,
)
from orchestr.eval.results import pair_outcomes, pair_table, run_results, single_table

REPO = Path(__file__).resolve().parents[1]
FASTCHAT = REPO.parent / "shared" / "data" / "fastchat"

# The fields (in order) FastChat's llm_judge writes: gen_model_answer/gen_api_answer, and
# common.play_a_match_single / play_a_match_pair.
ANSWER_FIELDS = ["question_id", "answer_id", "model_id", "choices", "tstamp"]
SINGLE_FIELDS = ["question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"]
PAIR_FIELDS = ["question_id", "model_1", "model_2", "g1_winner", "g2_winner", "judge", "g1_user_prompt",
               "g1_judgment", "g2_user_prompt", "g2_judgment", "turn", "tstamp"]
PROMPT_NAMES = ["pair-v2", "pair-v2-multi-turn", "pair-math-v1", "pair-math-v1-multi-turn", "single-v1",
                "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"]


def assert_fastchat_answer(r: dict) -> None:
    assert list(r) == ANSWER_FIELDS
    assert isinstance(r["question_id"], int)
    assert isinstance(r["answer_id"], str) and len(r["answer_id"]) == 22
    assert isinstance(r["model_id"], str)
    assert isinstance(r["tstamp"], float)
    assert r["choices"] and all(list(c) == ["index", "turns"] for c in r["choices"])
    assert [c["index"] for c in r["choices"]] == list(range(len(r["choices"])))
    assert all(isinstance(t, str) for c in r["choices"] for t in c["turns"])


def assert_fastchat_single(r: dict) -> None:
    assert list(r) == SINGLE_FIELDS
    assert isinstance(r["judge"], list) and len(r["judge"]) == 2 and r["judge"][1] in PROMPT_NAMES
    assert isinstance(r["score"], int | float) and (r["score"] == -1 or 1 <= r["score"] <= 10)
    assert r["turn"] in (1, 2)
    assert isinstance(r["user_prompt"], str) and isinstance(r["judgment"], str)


def assert_fastchat_pair(r: dict) -> None:
    assert list(r) == PAIR_FIELDS
    assert r["g1_winner"] in ("model_1", "model_2", "tie", "error")
    assert r["g2_winner"] in ("model_1", "model_2", "tie", "error")
    assert isinstance(r["judge"], list) and r["judge"][1] in PROMPT_NAMES
    assert r["turn"] in (1, 2)


@pytest.fixture
def fastchat() -> Path:
    if not FASTCHAT.is_dir():
        pytest.skip(f"shared test data not found at {FASTCHAT}")
    return FASTCHAT


def test_answer_records_match_fastchats_own_files(fastchat: Path) -> None:
    theirs = read_jsonl(fastchat / "mt_bench" / "reference_answer" / "gpt-4.jsonl")
    ours = answer_record(81, "smollm2-135m", [["turn one", "turn two"], ["again", "and again"]])
    for r in theirs:
        assert_fastchat_answer(r)  # the checker itself agrees with FastChat's files
    assert_fastchat_answer(json.loads(json.dumps(ours)))
    assert [type(v) for v in ours.values()] == [type(v) for v in theirs[0].values()]


def test_judgment_records_have_fastchats_fields() -> None:
    s = single_judgment_record(81, "m", ("gpt-4", "single-v1"), "prompt", "Rating: [[5]]", 5.0, 1)
    p = pair_judgment_record(81, "a", "b", "model_1", "tie", ("gpt-4", "pair-v2"), "p1", "j1", "p2", "j2", 2)
    assert_fastchat_single(json.loads(json.dumps(s)))
    assert_fastchat_pair(json.loads(json.dumps(p)))


def test_our_prompts_have_fastchats_names_fields_and_placeholders(fastchat: Path) -> None:
    import string

    ours = load_judge_prompts(None)
    theirs = load_judge_prompts(str(fastchat / "judge_prompts.jsonl"))  # a user can point config here
    assert sorted(theirs) == sorted(PROMPT_NAMES)
    assert sorted(ours) == sorted([*PROMPT_NAMES, "arena-hard-v1"])  # plus arena-hard's five-label prompt

    def fields(t: str) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(t) if f}

    for name in PROMPT_NAMES:
        assert ours[name].type == theirs[name].type
        assert ours[name].output_format == theirs[name].output_format
        assert fields(ours[name].prompt_template) == fields(theirs[name].prompt_template)
        # same contract, our own words
        assert ours[name].system_prompt != theirs[name].system_prompt


def test_embedded_bench_ships_in_the_package() -> None:
    cfg = compose()
    assert cfg.bench.name == "orchestr_mini"
    path = paths.resolve(cfg.bench.question_file)
    assert path.is_file() and "orchestr/eval/data" in path.as_posix()
    questions = load_questions(cfg.bench)
    assert 6 <= len(questions) <= 10
    assert all(len(q["turns"]) == 2 for q in questions)
    math = [q for q in questions if q["category"] == "math"]
    assert math and all(len(q["reference"]) == 2 for q in math)
    refs = load_references(cfg.bench, questions)
    assert all(q["question_id"] in refs for q in questions if q["category"] in cfg.bench.ref_categories)


def test_mt_bench_config_reads_fastchats_files(fastchat: Path) -> None:
    cfg = compose(["bench=mt_bench", f"eval.data_dir={fastchat}"])
    questions = load_questions(cfg.bench)
    assert len(questions) == 80 and questions[0]["question_id"] == 81
    refs = load_references(cfg.bench, questions)
    assert {q["question_id"] for q in questions if q["category"] in ("math", "reasoning", "coding")} <= set(refs)


def run_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(cwd / "runs")}
    return subprocess.run([sys.executable, "-m", "orchestr", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def test_missing_mt_bench_file_names_the_key_to_set(tmp_path: Path) -> None:
    out = run_eval("eval", "bench=mt_bench", "eval.step=answer", cwd=tmp_path)
    assert out.returncode == 2
    assert "bench.question_file" in out.stderr and "data/mt_bench/question.jsonl" in out.stderr
    assert "eval-data" in out.stderr and "Traceback" not in out.stderr


def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    out = run_eval("eval", "eval.step=answer", "eval.answer.endpoint=http://127.0.0.1:9/v1",
                   "eval.answer.max_retries=0", cwd=tmp_path)
    assert out.returncode == 2
    assert "no OpenAI-compatible server answers at http://127.0.0.1:9/v1" in out.stderr
    assert "eval.answer.endpoint" in out.stderr and "Traceback" not in out.stderr


def test_bad_step_and_mode_are_clear_errors(tmp_path: Path) -> None:
    out = run_eval("eval", "eval.step=evrything", cwd=tmp_path)
    assert out.returncode == 2 and "eval.step must be one of" in out.stderr
    (tmp_path / "data" / "orchestr_mini" / "model_answer").mkdir(parents=True)
    (tmp_path / "data" / "orchestr_mini" / "model_answer" / "m.jsonl").write_text(
        json.dumps(answer_record(1, "m", [["a", "b"]])) + "\n")
    out = run_eval("eval", "eval.step=judge", "judge.mode=pairwise-everything", cwd=tmp_path)
    assert out.returncode == 2 and "judge.mode must be one of" in out.stderr and "Traceback" not in out.stderr


def test_eval_data_offline_fails_fast_and_clearly(tmp_path: Path) -> None:
    start = time.monotonic()
    out = run_eval("eval-data", "bench=mt_bench", "eval.download.timeout_s=5", cwd=tmp_path)
    assert time.monotonic() - start < 60
    assert out.returncode == 2
    assert "cannot download" in out.stderr and "bench.question_url" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data" / "mt_bench" / "question.jsonl").exists()


def _pair(qid: int, g1: str, g2: str, turn: int = 1, m1: str = "a", m2: str = "b", judge: str = "j") -> dict:
    return pair_judgment_record(qid, m1, m2, g1, g2, (judge, "pair-v2"), "", "", "", "", turn)


def test_pairwise_win_needs_both_orders_to_agree() -> None:
    records = [
        _pair(1, "model_1", "model_1"),  # a wins
        _pair(2, "model_1", "model_2"),  # orders disagree: tie
        _pair(3, "tie", "tie"),  # tie
        _pair(4, "model_2", "model_2"),  # b wins
        _pair(5, "model_2", "model_2"),  # b wins
        _pair(6, "error", "model_1"),  # left out
    ]
    table = pair_table(pair_outcomes(records))
    assert table.loc["a", ["win", "loss", "tie"]].tolist() == [1, 2, 2]
    assert table.loc["b", ["win", "loss", "tie"]].tolist() == [2, 1, 2]
    assert table.loc["b", "win_rate"] == pytest.approx(0.4)
    assert table.loc["b", "win_rate_adjusted"] == pytest.approx(0.6)
    # against a baseline, the baseline's own row is dropped
    base = pair_table(pair_outcomes(records, baseline="b"), baseline="b")
    assert list(base.index) == ["a"]


def test_single_scores_per_turn_leave_out_unparseable() -> None:
    rec = [single_judgment_record(q, m, ("j", "single-v1"), "", "", s, t)
           for q, m, s, t in [(1, "a", 8, 1), (1, "a", 4, 2), (2, "a", 6, 1), (2, "a", -1, 2), (1, "b", 3, 1)]]
    table = single_table(rec)
    assert table.loc["a", "turn1"] == 7 and table.loc["a", "turn2"] == 4
    assert table.loc["a", "average"] == pytest.approx(6) and table.loc["a", "judged"] == 3
    assert table.loc["b", "turn1"] == 3


def test_results_write_csv_and_png(tmp_path: Path) -> None:
    cfg = compose([f"eval.data_dir={tmp_path}", "judge.name=j", "judge.mode=pairwise-all"])
    out = paths.judgment_file(str(tmp_path), "orchestr_mini", "j", pairwise=True)
    with JsonlAppender(out) as sink:
        for qid in range(1, 9):
            sink.append(_pair(qid, "model_1", "model_1" if qid % 2 else "tie"))
    written = run_results(cfg)
    assert written["table"].read_text().startswith("model,win,loss,tie,win_rate")
    assert written["plot"].read_bytes()[:4] == b"\x89PNG"
    assert "humanities" in written["categories"].read_text()


def test_agreement_between_two_judges(tmp_path: Path) -> None:
    j1, j2 = tmp_path / "j1_pair.jsonl", tmp_path / "j2_pair.jsonl"
    with JsonlAppender(j1) as a, JsonlAppender(j2) as b:
        a.append(_pair(1, "model_1", "model_1"))
        b.append(_pair(1, "model_2", "model_2", m1="b", m2="a"))  # same vote, other model order
        a.append(_pair(2, "model_1", "model_1"))
        b.append(_pair(2, "model_2", "model_2"))  # disagree
        a.append(_pair(3, "tie", "tie"))
        b.append(_pair(3, "model_1", "model_2"))  # tie vs tie (orders disagree) -> agree w/ tie
        a.append(_pair(4, "model_1", "model_1", turn=2))
        b.append(_pair(4, "model_1", "model_1", turn=2))
    cfg = compose([f"eval.agreement.files=[{j1},{j2}]"])
    table = run_agreement(cfg).set_index(["turn", "setup"])
    assert table.loc[(1, "w/ tie"), ["agree", "compared"]].tolist() == [2, 3]
    assert table.loc[(1, "w/o tie"), ["agree", "compared"]].tolist() == [1, 2]
    assert table.loc[("all", "w/ tie"), ["agree", "compared"]].tolist() == [3, 4]
    # human-style vote files (model_a/model_b/winner) with several judges in one file
    votes = tmp_path / "human.jsonl"
    votes.write_text("\n".join(json.dumps(v) for v in [
        {"question_id": 1, "model_a": "a", "model_b": "b", "winner": "model_a", "judge": "expert_1", "turn": 1},
        {"question_id": 1, "model_a": "b", "model_b": "a", "winner": "model_b", "judge": "expert_2", "turn": 1},
        {"question_id": 1, "model_a": "a", "model_b": "b", "winner": "model_a", "judge": "gpt4_pair", "turn": 1},
    ]) + "\n")
    cfg = compose([f"eval.agreement.files=[{votes}]", "eval.agreement.judges=[gpt4_pair,human]", "eval.agreement.turn=1"])
    table = run_agreement(cfg).set_index("setup")
    assert table.loc["w/ tie", ["agree", "compared"]].tolist() == [2, 2]


def test_appender_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "j_single.jsonl"
    good = single_judgment_record(1, "a", ("j", "single-v1"), "", "", 5, 1)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good)[:40])  # killed mid-write
    assert len(read_jsonl(path)) == 1
    with JsonlAppender(path) as sink:
        sink.append(single_judgment_record(2, "a", ("j", "single-v1"), "", "", 6, 1))
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)


def test_missing_prompt_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="bench.judge_prompt_file"):
        load_judge_prompts(str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("mode, n_pairs", [("single", 2), ("pairwise-all", 1), ("pairwise-baseline", 1)])
def test_matches_use_reference_and_multi_turn_prompts(mode: str, n_pairs: int) -> None:
    cfg = compose([f"judge.mode={mode}", "judge.baseline_model=b"])
    questions = load_questions(cfg.bench)
    answers = {m: {q["question_id"]: answer_record(q["question_id"], m, [["x", "y"]]) for q in questions}
               for m in ("a", "b")}
    refs = load_references(cfg.bench, questions)
    del refs[5]  # a reference category without a reference: refused, as FastChat does ...
    with pytest.raises(EvalError, match="(?s)coding need reference answers.*judge.allow_missing_reference"):
        build_matches(cfg, questions, answers, refs, load_judge_prompts(None), ["a", "b"])
    cfg.judge.allow_missing_reference = True  # ... or, when asked, judged with the general prompt
    matches = build_matches(cfg, questions, answers, refs, load_judge_prompts(None), ["a", "b"])
    assert len(matches) == n_pairs * len(questions) * 2
    kind = "single" if mode == "single" else "pair"
    by = {(m.question["question_id"], m.turn): m.prompt.name for m in matches}
    general, ref = ("single-v1", "single-math-v1") if kind == "single" else ("pair-v2", "pair-math-v1")
    assert by[(4, 1)] == ref and by[(4, 2)] == ref + "-multi-turn"  # math
    assert by[(1, 1)] == general and by[(1, 2)] == general + "-multi-turn"  # writing
    assert by[(5, 1)] == general  # coding without a reference
    if mode == "pairwise-baseline":
        assert {m.models for m in matches} == {("a", "b")}  # judged model first, baseline second


def test_single_turn_bench_is_judged_on_turn_one_only(fastchat: Path) -> None:
    cfg = compose(["bench=vicuna_bench", f"eval.data_dir={fastchat}", "judge.mode=pairwise-all",
                   f"bench.judge_prompt_file={fastchat / 'judge_prompts.jsonl'}"])  # FastChat's own prompts
    questions = load_questions(cfg.bench)
    answers = {m: {q["question_id"]: answer_record(q["question_id"], m, [["x"]]) for q in questions} for m in "ab"}
    matches = build_matches(cfg, questions, answers, load_references(cfg.bench, questions),
                            load_judge_prompts(cfg.bench.judge_prompt_file), ["a", "b"])
    assert len(matches) == len(questions) == 80
    assert {m.turn for m in matches} == {1}
    assert {m.prompt.name for m in matches} == {"pair-v2", "pair-math-v1"}


def test_custom_bench_without_its_file_says_where_it_goes(tmp_path: Path) -> None:
    out = run_eval("eval", "bench=allam_bench", "eval.step=judge", cwd=tmp_path)
    assert out.returncode == 2
    assert "bench allam_bench: question file not found: data/allam_bench/question.jsonl" in out.stderr
    assert "bench.question_file" in out.stderr and "Traceback" not in out.stderr
