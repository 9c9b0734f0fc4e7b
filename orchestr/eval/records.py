"""FastChat's JSONL records (model answers, single and pairwise judgments) and durable JSONL files.

Field names and order follow FastChat's llm_judge scripts exactly, so its own tools
(show_result.py, qa_browser.py) can read what orchestr writes and vice versa.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from orchestr.errors import UserError

_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # shortuuid's 57 symbols


def short_id() -> str:
    """A 22-character id in the style of FastChat's `shortuuid.uuid()` answer ids."""
    n, out = uuid.uuid4().int, []
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(out).ljust(22, _ALPHABET[0])[:22]


def answer_record(question_id: Any, model_id: str, turns_per_choice: list[list[str]]) -> dict:
    return {
        "question_id": question_id,
        "answer_id": short_id(),
        "model_id": model_id,
        "choices": [{"index": i, "turns": turns} for i, turns in enumerate(turns_per_choice)],
        "tstamp": time.time(),
    }


def single_judgment_record(
    question_id: Any, model: str, judge: tuple[str, str], user_prompt: str, judgment: str, score: float, turn: int
) -> dict:
    return {
        "question_id": question_id,
        "model": model,
        "judge": list(judge),  # FastChat writes the (judge model, prompt name) tuple as a JSON list
        "user_prompt": user_prompt,
        "judgment": judgment,
        "score": score,
        "turn": turn,
        "tstamp": time.time(),
    }


def pair_judgment_record(
    question_id: Any,
    model_1: str,
    model_2: str,
    g1_winner: str,
    g2_winner: str,
    judge: tuple[str, str],
    g1_user_prompt: str,
    g1_judgment: str,
    g2_user_prompt: str,
    g2_judgment: str,
    turn: int,
) -> dict:
    return {
        "question_id": question_id,
        "model_1": model_1,
        "model_2": model_2,
        "g1_winner": g1_winner,
        "g2_winner": g2_winner,
        "judge": list(judge),
        "g1_user_prompt": g1_user_prompt,
        "g1_judgment": g1_judgment,
        "g2_user_prompt": g2_user_prompt,
        "g2_judgment": g2_judgment,
        "turn": turn,
        "tstamp": time.time(),
    }


class CorruptLines(UserError, ValueError):
    """Lines that are not JSON records, by location (file:line)."""

    def __init__(self, path: Path, where: list[int]):
        self.path, self.where = path, where
        shown = ", ".join(f"{path}:{n}" for n in where[:5]) + (f" (and {len(where) - 5} more)" if len(where) > 5 else "")
        super().__init__(f"{len(where)} corrupt line(s) in {path}: {shown}")


def arena_hard_record(
    question_id: Any, category: str, model: str, baseline: str, judge: tuple[str, str], games: list[dict]
) -> dict:
    """arena-hard-auto's judgment shape (uid, category, judge, model, games[2] with user_prompt, judgment,
    score), with FastChat's question_id and orchestr's baseline beside it."""
    return {
        "question_id": question_id,
        "uid": str(question_id),
        "category": category,
        "judge": list(judge),
        "model": model,
        "baseline": baseline,
        "games": games,
        "tstamp": time.time(),
    }


def read_jsonl(path: Path, strict: bool = True) -> list[dict]:
    """All records. A torn last line (a run killed mid-write; the next append cuts it) is left out
    with a warning. A corrupt line anywhere else raises CorruptLines naming each file:line (strict),
    or is reported on stderr and left out (strict=False, for caches)."""
    path = Path(path)
    if not path.is_file():
        return []
    records, bad = [], []
    data = path.read_text(encoding="utf-8")
    lines = data.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            if n == len(lines) and not data.endswith("\n"):
                print(f"warning: {path}:{n}: torn last line (a killed run); left out", file=sys.stderr)
                continue
            bad.append(n)
            continue
        records.append(rec)
    if bad:
        err = CorruptLines(path, bad)
        if strict:
            raise err
        print(f"warning: {err}; left out", file=sys.stderr)
    return records


def quarantine_corrupt(path: Path) -> int:
    """Move corrupt lines (not the torn tail) of a JSONL file to `<file>.corrupt`; returns how many."""
    path = Path(path)
    if not path.is_file():
        return 0
    good, bad = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except json.JSONDecodeError:
            ok = False
        (good if ok else bad).append(line)
    if bad:
        with open(path.with_name(path.name + ".corrupt"), "a", encoding="utf-8") as f:
            f.write("\n".join(bad) + "\n")
        write_jsonl(path, [json.loads(x) for x in good])
    return len(bad)


def repair_tail(path: Path) -> None:
    """Cut a torn last line left by a killed run, so appends start on a clean line and readers never choke."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1  # 0 when the only line is torn
    tail = data[cut:]
    try:
        json.loads(tail)
        keep = data + b"\n"  # complete record, just missing its newline
    except ValueError:
        keep = data[:cut]
    with path.open("wb") as f:
        f.write(keep)
        f.flush()
        os.fsync(f.fileno())


class JsonlAppender:
    """Appends one record per line from many threads; each record is flushed and fsynced before returning,
    so a killed run loses at most the record being written and never leaves a duplicate."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(path)
        self._lock = threading.Lock()
        self._f = path.open("a", encoding="utf-8")

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        with self._lock:
            self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Rewrite a whole file atomically (used to sort and de-duplicate answer files)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
