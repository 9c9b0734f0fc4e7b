"""Optional input moderation: a blocked-words list and/or an OpenAI-compatible moderation endpoint."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from orchestr.config.serving import WebModerationConfig

log = logging.getLogger(__name__)

REFUSAL = ("⚠️ Your message was flagged by this server's moderation filter and was not sent to the model. "
           "Please rephrase it.")


@dataclass
class ModerationResult:
    flagged: bool
    source: str | None = None  # blocked_words | endpoint
    categories: list[str] = field(default_factory=list)

    def to_log(self) -> dict:
        return {"flagged": self.flagged, "source": self.source, "categories": self.categories}


def load_blocked_words(cfg: WebModerationConfig) -> list[str]:
    words = [w.strip() for w in cfg.blocked_words if w.strip()]
    if cfg.blocked_words_file:
        path = Path(cfg.blocked_words_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"blocked-words file {str(path)!r} does not exist")
        words += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()
                  if ln.strip() and not ln.lstrip().startswith("#")]
    return words


class Moderator:
    def __init__(self, cfg: WebModerationConfig) -> None:
        self.cfg = cfg
        words = load_blocked_words(cfg) if cfg.enabled else []
        # Whole words/phrases, case-insensitive: "ass" must not block "class".
        self._pattern = (re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
                         if words else None)

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    async def check(self, text: str) -> ModerationResult:
        if not self.cfg.enabled:
            return ModerationResult(flagged=False)
        if self._pattern is not None:
            hits = sorted({m.group(0).lower() for m in self._pattern.finditer(text)})
            if hits:
                return ModerationResult(flagged=True, source="blocked_words", categories=hits)
        if self.cfg.url:
            return await self._endpoint(text)
        return ModerationResult(flagged=False)

    async def _endpoint(self, text: str) -> ModerationResult:
        headers = {}
        key = os.environ.get(self.cfg.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.cfg.url.rstrip("/") + "/moderations"
        try:
            async with httpx.AsyncClient(timeout=self.cfg.timeout_s) as http:
                r = await http.post(url, json={"model": self.cfg.model, "input": text}, headers=headers)
                r.raise_for_status()
                result = r.json()["results"][0]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            # Fail open, loudly: an unreachable moderation service must not take the chat down.
            log.warning("moderation endpoint %s failed (%s); message allowed", url, exc)
            return ModerationResult(flagged=False)
        cats = sorted(k for k, v in (result.get("categories") or {}).items() if v)
        return ModerationResult(flagged=bool(result.get("flagged")), source="endpoint", categories=cats)
