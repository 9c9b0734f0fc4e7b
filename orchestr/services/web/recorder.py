"""Turns UI events into conversation-log lines (schema: orchestr.arena.logs) with the IP policy applied."""

from __future__ import annotations

import logging
import os
import time
import uuid

from orchestr.arena.logs import (
    ArenaLine,
    ChatLine,
    ChatVoteLine,
    ConvLogWriter,
    ConvState,
    hash_ip,
)
from orchestr.services.web.conversation import Conversation

IP_MODES = ("hash", "drop", "raw")
log = logging.getLogger(__name__)

# What the page and the health check say (never the folder or the errno: those are logged).
LOG_UNWRITABLE = "the server cannot write its log"
VOTE_NOT_RECORDED = f"Your vote was not recorded: {LOG_UNWRITABLE}."
TURN_NOT_RECORDED = f"This conversation was not recorded: {LOG_UNWRITABLE}."


def client_ip(request) -> str | None:
    """The browser's address as FastChat reads it: proxy headers first, then the socket peer."""
    if request is None:
        return None
    headers = {k.lower(): v for k, v in dict(getattr(request, "headers", {}) or {}).items()}
    if headers.get("cf-connecting-ip"):
        return headers["cf-connecting-ip"]
    if headers.get("x-forwarded-for"):
        return headers["x-forwarded-for"].split(",")[0].strip()
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


class Recorder:
    def __init__(self, log_dir: str, ip_logging: str = "hash", salt: str = "") -> None:
        if ip_logging not in IP_MODES:
            raise ValueError(f"ip_logging must be one of {IP_MODES}, not {ip_logging!r}")
        self.writer = ConvLogWriter(log_dir)
        self.ip_logging = ip_logging
        self.salt = salt

    def check_writable(self) -> str | None:
        """None when the log folder takes a record, else the problem in words (details logged):
        run at start-up so the health check reports it before the first user."""
        probe = self.writer.log_dir / f".write-check-{uuid.uuid4().hex}"
        try:
            self.writer.log_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            log.error("the conversation log folder %s cannot be written (%s): chats and votes will not be "
                      "recorded until it can", self.writer.log_dir, exc)
            return f"{LOG_UNWRITABLE} (conversation log folder): chats and votes are not recorded"
        return None

    def _write(self, line) -> bool:
        """One durable record; False (logged) when the folder cannot take it."""
        try:
            self.writer.write(line)
        except OSError as exc:
            log.error("cannot record a %s line in %s: %s", getattr(line, "type", "log"), self.writer.log_dir, exc)
            return False
        return True

    def _ip(self, request) -> str | None:
        if self.ip_logging == "drop":
            return None
        ip = client_ip(request)
        return ip if self.ip_logging == "raw" else hash_ip(ip, self.salt)

    @staticmethod
    def _state(conv: Conversation) -> ConvState:
        return ConvState.model_validate(conv.to_log())

    def chat(self, conv: Conversation, gen_params: dict, start: float, finish: float, request,
             **extra) -> bool:
        line = ChatLine(tstamp=round(finish, 4), model=conv.model_name, gen_params=gen_params,
                        start=round(start, 4), finish=round(finish, 4), state=self._state(conv),
                        ip=self._ip(request), **extra)
        return self._write(line)

    def chat_vote(self, vote_type: str, conv: Conversation, request) -> bool:
        line = ChatVoteLine(type=vote_type, model=conv.model_name, state=self._state(conv),
                            ip=self._ip(request))
        return self._write(line)

    def arena(self, vote_type: str, convs: list[Conversation], anony: bool, request,
              flag_reason: str | None = None) -> bool:
        line = ArenaLine.vote(vote_type, [self._state(c) for c in convs], anony, tstamp=round(time.time(), 4),
                              ip=self._ip(request), flag_reason=flag_reason)
        return self._write(line)
