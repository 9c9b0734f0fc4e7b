"""Blocked-words filter: records whose messages contain a listed word or phrase (whole words,
any case) are dropped, or tagged with the words found."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from orchestr.arena.records import StepReport, record_text

ACTIONS = ("drop", "tag")


def resolve_words_file(path: str) -> Path:
    """A relative path is looked up in the working folder, then in orchestr's conf/ tree."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"clean.blocked_words.words_file {path!r} does not exist")
        return p
    from orchestr.config import CONF_DIR

    q = Path(CONF_DIR) / p
    if q.is_file():
        return q
    raise FileNotFoundError(f"clean.blocked_words.words_file {path!r} found neither here nor in {CONF_DIR}")


def load_words(words_file: str | None, extra: list[str]) -> list[str]:
    words = [w.strip() for w in extra if w.strip()]
    if words_file:
        for line in resolve_words_file(words_file).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                words.append(line)
    return sorted(set(w.lower() for w in words))


def compile_words(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    # Longest first so a phrase wins over a word it contains; \b-like guards that also work
    # for words that start or end in punctuation.
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alts})(?!\w)", re.I)


def filter_records(records: list[dict[str, Any]], cfg: Any) -> tuple[list[dict[str, Any]], StepReport]:
    if cfg.action not in ACTIONS:
        raise ValueError(f"clean.blocked_words.action={cfg.action!r}: expected drop or tag")
    words = load_words(cfg.words_file, list(cfg.words))
    if not words:
        raise ValueError("clean.blocked_words: the word list is empty (set words_file or words)")
    pattern = compile_words(words)
    report = StepReport("blocked_words", read=len(records))
    kept = []
    for rec in records:
        found = sorted({m.group().lower() for m in pattern.finditer(record_text(rec))}) if pattern else []
        if found and cfg.action == "drop":
            report.drop("blocked_word")
            continue
        if cfg.action == "tag":
            rec["blocked_words"] = found
            if found:
                report.tag("blocked_word")
        kept.append(rec)
    report.kept = len(kept)
    return kept, report
