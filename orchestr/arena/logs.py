"""The web UI's conversation log: one definition of its lines, a durable writer, a lenient reader.

The web service WRITES with these models and `ConvLogWriter`; `orchestr clean` READS the same
files. Lines keep FastChat's field names so FastChat's own monitor scripts can read them too:

* chat turn   ``{"tstamp", "type": "chat", "model", "gen_params", "start", "finish", "state", "ip"}``
* chat vote   ``{"tstamp", "type": "upvote"|"downvote"|"flag", "model", "state", "ip"}``
* arena line  ``{"tstamp", "type": "leftvote"|"rightvote"|"tievote"|"bothbad_vote"|"share"|"flag",
  "models": [a, b], "states": [state_a, state_b], "ip"}``

``state`` is FastChat's ``Conversation.dict()`` plus ``conv_id`` and ``model_name``: ``messages`` is
a list of ``[role, text]`` pairs (``text`` None while a reply is pending) and ``offset`` the number
of leading few-shot/system messages that are not part of the user's conversation.

A blind battle is written exactly as FastChat's anonymous tab writes it: ``models: ["", ""]`` (what
the screen showed) with the real names only in ``states[i].model_name``; a side-by-side vote carries
the real names in both places. Readers also accept orchestr's older lines, which named both sides in
``models`` and said ``"anony": true``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

BATTLE_VOTE_TYPES = ("leftvote", "rightvote", "tievote", "bothbad_vote")
CHAT_VOTE_TYPES = ("upvote", "downvote", "flag")
ALL_TYPES = ("chat", *CHAT_VOTE_TYPES, *BATTLE_VOTE_TYPES, "share")
LOG_FILE_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})-conv\.json$")


class ConvState(BaseModel):
    """One side's conversation as logged (FastChat ``State.dict()``)."""

    model_config = ConfigDict(extra="allow")  # template_name, system_message, roles, ... pass through

    conv_id: str
    model_name: str | None
    messages: list[list[str | None]] = Field(default_factory=list)  # [[role, text], ...]
    offset: int = 0
    template_name: str | None = None
    system_message: str = ""
    roles: list[str] = Field(default_factory=lambda: ["user", "assistant"])


class _LogLine(BaseModel):
    """What every line has: a timestamp first, and fields of newer writers pass through."""

    model_config = ConfigDict(extra="allow")

    tstamp: float = Field(default_factory=lambda: round(time.time(), 4))


class ChatLine(_LogLine):
    """One finished model reply on any tab."""

    type: Literal["chat"] = "chat"
    model: str
    gen_params: dict[str, Any] = Field(default_factory=dict)
    start: float
    finish: float
    state: ConvState
    ip: str | None = None


class ChatVoteLine(_LogLine):
    """A vote on the single-model chat tab."""

    type: Literal["upvote", "downvote", "flag"]
    model: str
    state: ConvState
    ip: str | None = None


class ArenaLine(_LogLine):
    """A vote (or share / flag) on an arena tab: two sides, in screen order (A then B)."""

    type: Literal["leftvote", "rightvote", "tievote", "bothbad_vote", "share", "flag"]
    models: list[str]  # names on screen, A then B: "" on the anonymous tab (FastChat's shape)
    states: list[ConvState]  # each with the real `model_name`
    ip: str | None = None
    flag_reason: str | None = None  # on "flag": e.g. "identity_leak" (left out when unset)

    @classmethod
    def vote(cls, type: str, states: list[ConvState], anony: bool, **kw: Any) -> ArenaLine:
        """A line as FastChat writes it: hidden names ("") on an anonymous battle."""
        models = ["", ""] if anony else [str(s.model_name) for s in states]
        return cls(type=type, models=models, states=states, **kw)


LogLine = ChatLine | ChatVoteLine | ArenaLine


def hash_ip(ip: str | None, salt: str = "") -> str | None:
    """Stable pseudonym of an address (the web UI's `ip` hashing; also the battles' judge id)."""
    if ip is None:
        return None
    return hashlib.sha256(f"{salt}{ip}".encode()).hexdigest()[:16]


def conv_log_path(log_dir: str | os.PathLike, when: dt.datetime | None = None) -> Path:
    """FastChat's day file: ``<log_dir>/YYYY-MM-DD-conv.json`` (local date)."""
    when = when or dt.datetime.now()
    return Path(log_dir).expanduser() / f"{when:%Y-%m-%d}-conv.json"


class ConvLogWriter:
    """Appends lines to the day's file; each line is flushed and fsynced before `write` returns."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir).expanduser()
        self._lock = threading.Lock()  # Gradio handlers run on several threads

    def write(self, line: LogLine | dict[str, Any]) -> Path:
        record = line.model_dump(mode="json") if isinstance(line, BaseModel) else dict(line)
        if record.get("flag_reason", "") is None:
            del record["flag_reason"]  # not a FastChat field: only written when it says something
        when = dt.datetime.fromtimestamp(record["tstamp"]) if "tstamp" in record else None
        path = conv_log_path(self.log_dir, when)
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            # One os.write on an O_APPEND fd: concurrent writers never interleave inside a line.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        return path


# --------------------------------------------------------------------------- reading


def _parse_day(value: str | None, what: str) -> dt.date | None:
    if value in (None, ""):
        return None
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{what}={value!r} is not a date (YYYY-MM-DD)") from None


def find_log_files(
    log_dirs: Iterable[str | os.PathLike],
    start_date: str | None = None,
    end_date: str | None = None,
    max_num_files: int | None = None,
) -> list[Path]:
    """Day files under the folders (searched recursively: FastChat keeps one folder per server),
    oldest first, within the date range, the newest `max_num_files` of them."""
    start, end = _parse_day(start_date, "start_date"), _parse_day(end_date, "end_date")
    found: list[tuple[str, Path]] = []
    for log_dir in log_dirs:
        root = Path(log_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"log folder {str(root)!r} does not exist")
        for path in root.rglob("*-conv.json"):
            m = LOG_FILE_RE.match(path.name)
            if not m:
                continue
            day = dt.date.fromisoformat(m.group(1))
            if (start and day < start) or (end and day > end):
                continue
            found.append((m.group(1), path))
    found.sort()
    files = [p for _, p in found]
    if max_num_files is not None:
        files = files[-max_num_files:] if max_num_files > 0 else []
    return files


class ReadStats:
    def __init__(self) -> None:
        self.lines = 0
        self.malformed = 0
        self.where: list[str] = []  # "file:line" of each malformed line

    def describe(self, show: int = 5) -> str:
        more = f" (and {len(self.where) - show} more)" if len(self.where) > show else ""
        return f"{self.malformed} malformed line(s) skipped: {', '.join(self.where[:show])}{more}"


def read_log_lines(
    files: Iterable[Path], types: Iterable[str] | None = None, stats: ReadStats | None = None
) -> Iterator[dict[str, Any]]:
    """Raw line dicts of the given types. A torn or foreign line is counted, located and skipped."""
    wanted = set(types) if types is not None else None
    stats = stats if stats is not None else ReadStats()
    for path in files:
        with open(path, encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                stats.lines += 1
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError:
                    row = None
                if not isinstance(row, dict) or "type" not in row:
                    stats.malformed += 1
                    stats.where.append(f"{path}:{n}")
                    continue
                if wanted is None or row["type"] in wanted:
                    yield row


def line_date(tstamp: float) -> dt.date:
    return dt.datetime.fromtimestamp(tstamp).date()


def in_date_range(tstamp: float, start_date: str | None, end_date: str | None) -> bool:
    start, end = _parse_day(start_date, "start_date"), _parse_day(end_date, "end_date")
    day = line_date(tstamp)
    return not ((start and day < start) or (end and day > end))
