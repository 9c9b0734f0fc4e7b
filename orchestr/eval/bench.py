"""Loading a bench from config: questions, reference answers, judge prompts, model answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestr.eval import paths
from orchestr.eval.errors import EvalError
from orchestr.eval.records import read_jsonl

BUILTIN_PROMPTS = "pkg:judge_prompts.jsonl"
PROMPT_FIELDS = ("name", "type", "system_prompt", "prompt_template", "output_format")


def _missing_file_message(what: str, path: Path, key: str, bench: Any, url: str | None) -> str:
    msg = f"bench {bench.name}: {what} not found: {path}\n  set {key}=/path/to/{path.name}"
    if url:
        msg += f", or fetch it with `orchestr eval-data bench={bench.name}` (from {url})"
    return msg


def load_questions(bench: Any, begin: int | None = None, end: int | None = None) -> list[dict]:
    """The bench's questions (FastChat's question.jsonl: question_id, category, turns[, reference])."""
    path = paths.resolve(bench.question_file)
    if not path.is_file():
        raise EvalError(_missing_file_message("question file", path, "bench.question_file", bench, bench.question_url))
    questions = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(q, dict) or "question_id" not in q or not isinstance(q.get("turns"), list):
                raise EvalError(f"{path}:{n}: a question needs `question_id` and a `turns` list")
            q.setdefault("category", "general")
            questions.append(q)
    return questions[begin:end]


def load_answers(answer_dir: Path) -> dict[str, dict[Any, dict]]:
    """model_id -> question_id -> answer record, from every <model_id>.jsonl in a model_answer folder."""
    answers: dict[str, dict[Any, dict]] = {}
    if not answer_dir.is_dir():
        return answers
    for f in sorted(answer_dir.glob("*.jsonl")):
        by_q = {r["question_id"]: r for r in read_jsonl(f) if "question_id" in r}
        answers[f.stem] = by_q
    return answers


def load_references(bench: Any, questions: list[dict]) -> dict[Any, list[str]]:
    """question_id -> reference turns: from bench.reference_answer_file, else the questions' `reference`."""
    refs: dict[Any, list[str]] = {
        q["question_id"]: list(q["reference"]) for q in questions if isinstance(q.get("reference"), list)
    }
    if bench.reference_answer_file:
        path = paths.resolve(bench.reference_answer_file)
        if not path.is_file():  # never fall back silently to whatever the question file carries
            raise EvalError(_missing_file_message("reference answer file", path, "bench.reference_answer_file",
                                                  bench, bench.reference_answer_url))  # fmt: skip
        for r in read_jsonl(path):
            try:
                refs[r["question_id"]] = list(r["choices"][0]["turns"])
            except (KeyError, IndexError, TypeError):
                raise EvalError(f"{path}: reference answers must use the model-answer schema (choices[0].turns)") from None
    return refs


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    type: str  # single | pairwise
    system_prompt: str
    prompt_template: str
    output_format: str
    category: str = "general"
    description: str = ""


def load_judge_prompts(prompt_file: str | None) -> dict[str, JudgePrompt]:
    """Prompts by name, from orchestr's own file or a user's (e.g. FastChat's judge_prompts.jsonl)."""
    path = paths.resolve(prompt_file or BUILTIN_PROMPTS)
    if not path.is_file():
        raise EvalError(f"judge prompt file not found: {path}\n  set bench.judge_prompt_file=/path/to/judge_prompts.jsonl")
    prompts = {}
    for r in read_jsonl(path):
        missing = [k for k in PROMPT_FIELDS if k not in r]
        if missing:
            raise EvalError(f"{path}: prompt {r.get('name', '?')!r} lacks {', '.join(missing)}")
        prompts[r["name"]] = JudgePrompt(**{k: r.get(k, "") for k in JudgePrompt.__dataclass_fields__})
    return prompts
