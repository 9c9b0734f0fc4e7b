"""Which judgments a run needs (FastChat's make_match_*), each with a key that identifies it on disk."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

from orchestr.eval.bench import JudgePrompt
from orchestr.eval.errors import EvalError

MODES = ("single", "pairwise-baseline", "pairwise-all")


@dataclass(frozen=True)
class Match:
    question: dict
    models: tuple[str, ...]  # one model (single) or (model_1, model_2)
    turn: int  # 1, or 2 for the multi-turn prompt
    prompt: JudgePrompt
    reference: list[str] | None  # reference turns when the category needs them

    @property
    def key(self) -> tuple:
        return (str(self.question["question_id"]), self.models, self.turn, self.prompt.name)


def single_key(record: dict) -> tuple:
    return (str(record["question_id"]), (record["model"],), int(record["turn"]), record["judge"][1])


def pair_key(record: dict) -> tuple:
    return (str(record["question_id"]), (record["model_1"], record["model_2"]), int(record["turn"]), record["judge"][1])


def model_pairs(mode: str, models: list[str], baseline: str) -> list[tuple[str, ...]]:
    if mode == "single":
        return [(m,) for m in models]
    if mode == "pairwise-baseline":
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
