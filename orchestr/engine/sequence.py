"""One request's state inside the engine: tokens, KV blocks, streamed text, finish."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from orchestr.engine.detokenizer import IncrementalDetokenizer, StopStringMatcher
from orchestr.engine.paged_attention import BlockTable
from orchestr.engine.sampling import SamplingParams
from orchestr.protocol import GenerateChunk, UsageInfo


@dataclass
class PreparedRequest:
    """A request after templating, tokenisation and limit checks (done off the engine thread)."""

    request_id: str
    prompt_text: str
    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    stop: list[str] = field(default_factory=list)
    stop_token_ids: set[int] = field(default_factory=set)
    echo: bool = False


class Sequence:
    def __init__(self, prep: PreparedRequest, tokenizer, sink: Callable[[GenerateChunk], None],
                 max_tokens: int, device) -> None:
        self.prep = prep
        self.request_id = prep.request_id
        self.prompt_ids = prep.prompt_ids
        self.output_ids: list[int] = []
        self.params = prep.params
        self.sink = sink
        self.table = BlockTable(max_tokens, device=device)
        self.kv_len = 0  # tokens whose keys/values are in the cache
        self.detok = IncrementalDetokenizer(tokenizer)
        self.matcher = StopStringMatcher(prep.stop)
        self.text = ""
        self.emitted = 0  # characters of ``text`` already sent
        self.finished = False
        self.arrival = time.monotonic()
        self.generator: torch.Generator | None = None
        if prep.params.seed is not None:
            self.generator = torch.Generator().manual_seed(prep.params.seed)

    # tokens ----------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet run through the model (the prompt's rest, or the last sampled one)."""
        return self.num_tokens - self.kv_len

    @property
    def is_decoding(self) -> bool:
        return self.kv_len >= len(self.prompt_ids) and self.num_pending == 1

    def pending_tokens(self, n: int) -> list[int]:
        start = self.kv_len
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p : start - p + n]
        head = self.prompt_ids[start : start + n]
        if len(head) < n:
            head = head + self.output_ids[: n - len(head)]
        return head

    # output ----------------------------------------------------------------
    def usage(self) -> UsageInfo:
        p, c = len(self.prompt_ids), len(self.output_ids)
        return UsageInfo(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)

    def append_token(self, token: int) -> None:
        """Record a sampled token, stream any new text, and finish when a stop condition holds."""
        self.output_ids.append(token)
        finish = None
        text_ids = self.output_ids
        if token in self.prep.stop_token_ids:
            finish = "stop"
            text_ids = self.output_ids[:-1]
        elif len(self.output_ids) >= self.prep.max_new_tokens:
            finish = "length"
        self.text += self.detok.step(text_ids, final=finish is not None)
        hit = self.matcher.find(self.text, self.emitted)
        if hit != -1:
            self.text = self.text[:hit]
            finish = "stop"
        upto = len(self.text) if finish else len(self.text) - self.matcher.holdback(self.text)
        delta = self.text[self.emitted : upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        if finish:
            self.finish(finish, delta)
        elif delta:
            self.sink(GenerateChunk(text=delta, usage=self.usage()))

    def finish(self, reason: str, delta: str = "", error: str | None = None, error_code: int = 0) -> None:
        if self.finished:
            return
        self.finished = True
        self.sink(GenerateChunk(text=delta, finish_reason=reason, usage=self.usage(), error=error,
                                error_code=error_code))
