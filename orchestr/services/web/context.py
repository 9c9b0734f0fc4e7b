"""What every tab of the web UI shares: settings, the serving client, the log recorder, moderation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from orchestr.config.serving import WebServiceConfig
from orchestr.services.web.client import BackendError, ServingClient
from orchestr.services.web.conversation import Conversation
from orchestr.services.web.moderation import Moderator
from orchestr.services.web.recorder import TURN_NOT_RECORDED, Recorder

log = logging.getLogger(__name__)


@dataclass
class GenParams:
    temperature: float
    top_p: float
    max_new_tokens: int

    @classmethod
    def from_ui(cls, temperature, top_p, max_new_tokens) -> GenParams:
        # Sliders can hand back None or out-of-range typed values; clamp to what workers accept.
        t = min(max(float(temperature if temperature is not None else 0.7), 0.0), 2.0)
        p = min(max(float(top_p if top_p is not None else 1.0), 0.01), 1.0)
        n = max(int(max_new_tokens or 1), 1)
        return cls(t, p, n)

    def to_log(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}


@dataclass
class WebContext:
    cfg: WebServiceConfig
    client: ServingClient
    recorder: Recorder
    moderator: Moderator
    models: list[str] = field(default_factory=list)  # the list read at start-up

    log_problem: str | None = None  # why the log folder cannot be written (start-up check), if so

    def health(self) -> dict:
        """The web UI's /health: "degraded" with the problems a user would meet (no paths)."""
        problems = [self.log_problem] if self.log_problem else []
        return {"status": "degraded" if problems else "ok", "mode": self.cfg.mode, "problems": problems}

    @staticmethod
    def turn_notice(convs: list[Conversation]) -> str:
        """What the page says after a turn: nothing, or that the log could not record it."""
        return "" if all(c.recorded for c in convs) else TURN_NOT_RECORDED

    def current_models(self, refresh: bool = False) -> list[str]:
        """Models to offer now: re-read from the controller unless the list is read once."""
        if refresh or self.cfg.model_list_mode == "reload":
            fresh = self.client.list_models(refresh=refresh)
            if fresh:
                self.models = fresh
        return self.models

    async def stream_reply(self, conv: Conversation, params: GenParams, request) -> AsyncIterator[None]:
        """Fill the pending reply of ``conv`` from its model, yielding after each delta; logs the
        finished turn. A backend failure becomes the reply text (the user sees what went wrong)."""
        start = time.time()
        text = ""
        error = None
        try:
            async for delta in self.client.stream_chat(conv.model_name, conv.prompt(), params.temperature,
                                                       params.top_p, params.max_new_tokens):
                text += delta
                conv.set_reply(text)
                yield
        except BackendError as exc:
            error = str(exc)
            # FastChat's marker: the arena analytics drop votes on answers that carry it.
            conv.set_reply((text + "\n\n" if text else "") + f"⚠️ **API REQUEST ERROR** {error}")
            yield
        if not text and error is None:
            conv.set_reply("")  # an empty answer is still an answer; keep the turn structure
        # an unwritable log loses the record, never the answer on screen (the page says so)
        conv.recorded = self.recorder.chat(conv, params.to_log(), start, time.time(), request,
                                           **({"error": error} if error else {}))

    async def stream_replies(self, convs: list[Conversation], params: GenParams, request) -> AsyncIterator[None]:
        """Several replies generated at once (arena sides), yielding whenever any of them grows."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(conv: Conversation) -> None:
            try:
                async for _ in self.stream_reply(conv, params, request):
                    await queue.put(True)
            except Exception:  # a bug on one side must not hang the other (details in the log)
                log.exception("stream for %s failed", conv.model_name)
                conv.set_reply("⚠️ Something went wrong while this answer was generated. Please try again.")
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(pump(c)) for c in convs]
        remaining = len(tasks)
        try:
            while remaining:
                if await queue.get() is None:
                    remaining -= 1
                yield
        finally:
            for t in tasks:
                t.cancel()
