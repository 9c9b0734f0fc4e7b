"""Worker token logprobs in OpenAI's two shapes: chat's ``{"content": [{token, logprob, bytes,
top_logprobs}]}`` and the legacy completions' ``{tokens, token_logprobs, top_logprobs, text_offset}``."""

from __future__ import annotations

from typing import Any

from orchestr.protocol import TokenLogprob


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(entries: list[TokenLogprob], top_n: int) -> dict[str, Any]:
    content = [{"token": e.token, "logprob": e.logprob, "bytes": _bytes(e.token),
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": _bytes(t.token)}
                                 for t in e.top[:top_n]]}
               for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], top_n: int, text_offset: int = 0) -> dict[str, Any]:
    tokens, lps, tops, offsets = [], [], [], []
    pos = text_offset
    for e in entries:
        tokens.append(e.token)
        lps.append(e.logprob)
        # the first echoed prompt token has no distribution: OpenAI sends null there
        tops.append(None if e.logprob is None else {t.token: t.logprob for t in e.top[:top_n]})
        offsets.append(pos)
        pos += len(e.token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
