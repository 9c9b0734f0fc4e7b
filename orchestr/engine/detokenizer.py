"""Streaming text out of a growing token list: incremental decoding that never emits half a
UTF-8 character, and stop strings that may span several chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class IncrementalDetokenizer:
    """Turns appended token ids into text deltas.

    Decoding token by token breaks multi-byte characters and drops the spaces some tokenizers
    attach to the following token, so each step decodes a short window (from ``prefix`` to
    the end) and emits what it adds over the text of the window's already-emitted part."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.prefix = 0  # start of the decode window
        self.read = 0  # tokens up to here have been turned into text

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=self.skip_special_tokens)

    def step(self, ids: Sequence[int], final: bool = False) -> str:
        """New text for ``ids`` (the whole output so far). ``final`` flushes incomplete
        characters too (as replacement characters)."""
        if self.read >= len(ids):
            return ""
        prefix_text = self._decode(ids[self.prefix : self.read]) if self.read > self.prefix else ""
        full = self._decode(ids[self.prefix :])
        if len(full) <= len(prefix_text) and not final:
            return ""
        if full.endswith("\ufffd") and not final:
            return ""  # a multi-byte character is still incomplete: wait for its next token
        delta = full[len(prefix_text) :]
        self.prefix = self.read
        self.read = len(ids)
        return delta


class StopStringMatcher:
    """Finds stop strings in streamed text and holds back any tail that could be the start
    of one, so a client never sees part of a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.max_len = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, search_from: int) -> int:
        """Index of the earliest stop string in ``text`` starting at/after ``search_from``
        minus the longest stop (a match may straddle the boundary); -1 if none."""
        if not self.stops:
            return -1
        start = max(0, search_from - self.max_len)
        best = -1
        for s in self.stops:
            i = text.find(s, start)
            if i != -1 and (best == -1 or i < best):
                best = i
        return best

    def holdback(self, text: str) -> int:
        """How many trailing characters of ``text`` may begin a stop string."""
        longest = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:k]):
                    longest = k
                    break
        return longest
