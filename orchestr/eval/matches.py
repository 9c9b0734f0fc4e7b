"""Which judgments a run needs (FastChat's make_match_*), each with a key that identifies it on disk."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

from orchestr.eval.bench import JudgePrompt
from orchestr.eval.errors import EvalError

MODES = ("single", "pairwise-baseline", "pairwise-all", "arena-hard")


@dataclass(frozen=True)
class Match:
    question: dict
    models: tuple[str, ...]  # one model (single) or (model_1, model_2)
    turn: int  # 1, or 2 for the multi-turn prompt
    prompt: JudgePrompt
    reference: list[str] | None  # reference turns when the category needs them

    @property
    def key(self) -> tuple:
        # A pair in either order is one match (FastChat writes pairwise-all as (a, b), a pair file may
        # hold (b, a)): sorted names make the key canonical, so resume never judges a pair twice.
        return (str(self.question["question_id"]), tuple(sorted(self.models)), self.turn, self.prompt.name)


def record_turn(record: dict) -> int:
    """A judgment's turn. FastChat's older pair records have no `turn`: its prompt name says it
    (the `-multi-turn` prompts judge turn 2)."""
    if record.get("turn") is not None:
        return int(record["turn"])
    judge = record.get("judge") or ["", ""]
    return 2 if str(judge[1]).endswith("multi-turn") else 1


def single_key(record: dict) -> tuple:
    return (str(record["question_id"]), (record["model"],), record_turn(record), record["judge"][1])


def pair_key(record: dict) -> tuple:
    return (str(record["question_id"]), tuple(sorted((record["model_1"], record["model_2"]))), record_turn(record),
            record["judge"][1])  # fmt: skip


def model_pairs(mode: str, models: list[str], baseline: str) -> list[tuple[str, ...]]:
    if mode == "single":
        return [(m,) for m in models]
    if mode in ("pairwise-baseline", "arena-hard"):
        # FastChat order: the judged model is model_1, the baseline model_2.
        return [(m, baseline) for m in models if m != baseline]
    if mode == "pairwise-all":
        return list(combinations(models, 2))
    raise EvalError(f"judge.mode must be one of {', '.join(MODES)}, not {mode!r}")


def build_matches(
    cfg: Any,
    questions: list[dict],
    answers: dict[str, dict[Any, dict]],
    references: dict[Any, list[str]],
    prompts: dict[str, JudgePrompt],
    models: list[str],
) -> list[Match]:
    """Turn-1 matches for every question and turn-2 matches for two-turn questions; reference-guided
    prompts for the bench's reference categories. Questions a model has not answered are left out."""
    mode = cfg.judge.mode
    names = cfg.bench.judge_prompts
    pairwise = mode != "single"
    ref_cats = set(cfg.bench.ref_categories)
    if mode == "arena-hard":
        return _arena_hard_matches(cfg, questions, answers, prompts, models)
    no_ref = sorted({q["category"] for q in questions if q["category"] in ref_cats and not references.get(q["question_id"])})
    if no_ref:
        where = cfg.bench.reference_answer_file or "the question file (its `reference` fields)"
        msg = (f"bench {cfg.bench.name}: categories {', '.join(no_ref)} need reference answers (bench.ref_categories) "
               f"but {where} lacks them for some of their questions")
        if not cfg.judge.allow_missing_reference:
            raise EvalError(msg + "\n  set bench.reference_answer_file=/path/to/reference_answer.jsonl, or "
                            "judge.allow_missing_reference=true to judge those questions without a reference")
        print(f"warning: {msg}; judging them without a reference (judge.allow_missing_reference=true)")

    def prompt(kind: str) -> JudgePrompt:
        name = getattr(names, kind)
        if name not in prompts:
            raise EvalError(f"judge prompt {name!r} (bench.judge_prompts.{kind}) is not in the prompt file")
        return prompts[name]

    matches = []
    for pair in model_pairs(mode, models, cfg.judge.baseline_model):
        for q in questions:
            if any(q["question_id"] not in answers.get(m, {}) for m in pair):
                continue
            ref = references.get(q["question_id"]) if q["category"] in ref_cats else None
            base = ("pair" if pairwise else "single") + ("_ref" if ref else "")
            matches.append(Match(q, pair, 1, prompt(base), ref))
            if cfg.bench.turns >= 2 and len(q["turns"]) >= 2:
                ref2 = ref if ref and len(ref) >= 2 else None  # the turn-2 prompt needs both reference turns
                base2 = ("pair" if pairwise else "single") + ("_ref" if ref2 else "")
                matches.append(Match(q, pair, 2, prompt(base2 + "_multi_turn"), ref2))
    return matches


def _arena_hard_matches(cfg: Any, questions: list[dict], answers: dict, prompts: dict, models: list[str]) -> list[Match]:
    """arena-hard-auto: every model against the baseline on the first turn, one match per question
    (the judge plays both position orders inside it)."""
    name = cfg.judge.arena_hard_prompt
    if name not in prompts:
        raise EvalError(f"judge prompt {name!r} (judge.arena_hard_prompt) is not in the prompt file")
    out = []
    for pair in model_pairs("arena-hard", models, cfg.judge.baseline_model):
        for q in questions:
            if all(q["question_id"] in answers.get(m, {}) for m in pair):
                out.append(Match(q, pair, 1, prompts[name], None))
    return out
