"""Reading and writing step files (JSON list or JSONL, by extension) and reaching their messages.

Release steps work on any record that carries OpenAI-format conversations: gathered chats
(`conversation`) and conv-release battles (`conversation_a`, `conversation_b`) alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONVERSATION_KEYS = ("conversation", "conversation_a", "conversation_b")


def _expand(path: str | os.PathLike) -> Path:
    return Path(path).expanduser()


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    p = _expand(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file {str(p)!r} does not exist (run the step that writes it first?)")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid {'JSONL' if p.suffix == '.jsonl' else 'JSON'} ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a JSON list of records")
    return data


def write_records(path: str | os.PathLike, records: list[dict[str, Any]]) -> Path:
    p = _expand(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        if p.suffix == ".jsonl":
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            json.dump(records, f, indent=2, ensure_ascii=False)
    os.replace(tmp, p)  # a reader never sees half a file
    return p


def iter_messages(record: dict[str, Any], roles: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The record's OpenAI-format messages (mutable dicts), optionally only some roles'."""
    for key in CONVERSATION_KEYS:
        for msg in record.get(key) or []:
            if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                if roles is None or msg.get("role") in roles:
                    yield msg


def record_text(record: dict[str, Any], roles: list[str] | None = None) -> str:
    return "\n".join(m["content"] for m in iter_messages(record, roles))


def to_openai_format(messages: list[list[Any]]) -> list[dict[str, Any]]:
    """FastChat ``[[role, text], ...]`` (user first) -> ``[{"role", "content"}, ...]``."""
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": m[1]} for i, m in enumerate(messages)]


@dataclass
class StepReport:
    """What one step read, kept and dropped (printed, and returned to callers and tests)."""

    step: str
    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    tagged: dict[str, int] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. where malformed input lines are

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def tag(self, what: str, n: int = 1) -> None:
        self.tagged[what] = self.tagged.get(what, 0) + n

    def summary(self) -> str:
        parts = [f"[{self.step}] read {self.read}, kept {self.kept}, dropped {sum(self.dropped.values())}"]
        if self.dropped:
            parts.append("(" + ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) + ")")
        if self.tagged:
            parts.append("tagged " + ", ".join(f"{k}: {v}" for k, v in sorted(self.tagged.items())))
        line = " ".join(parts)
        for note in self.notes:
            line += f"\n[{self.step}] {note}"
        for out in self.outputs:
            line += f"\n[{self.step}] wrote {out}"
        return line
