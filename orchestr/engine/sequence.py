"""One request's state inside the engine: tokens, KV blocks, streamed text, finish."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from orchestr.engine.block_pool import BLOCK_SIZE, ROOT_HASH, chain_hashes
from orchestr.engine.detokenizer import IncrementalDetokenizer, StopStringMatcher
from orchestr.engine.paged_attention import BlockTable
from orchestr.engine.sampling import Logprob, SamplingParams
from orchestr.protocol import GenerateChunk, PromptTokensDetails, TokenLogprob, TopLogprob, UsageInfo


def token_text(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def logprob_entry(tokenizer: Any, token: int, lp: Logprob) -> TokenLogprob:
    return TokenLogprob(token=token_text(tokenizer, token), logprob=lp.logprob, id=token,
                        top=[TopLogprob(token=token_text(tokenizer, t), logprob=v, id=t) for t, v in lp.top])


def token_logprobs(tokenizer: Any, ids: list[int], logits: torch.Tensor, k: int) -> list[TokenLogprob]:
    """Logprobs of ``ids[1:]`` under ``logits`` (row t predicts token t+1); the first token has none."""
    logprobs = torch.log_softmax(logits, dim=-1)
    out = [TokenLogprob(token=token_text(tokenizer, ids[0]), logprob=None, id=ids[0])]
    for t in range(1, len(ids)):
        row = logprobs[t - 1]
        top = []
        if k > 0:
            values, indices = torch.topk(row, k)
            top = list(zip(indices.tolist(), values.tolist(), strict=True))
        out.append(logprob_entry(tokenizer, ids[t], Logprob(float(row[ids[t]]), top)))
    return out


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
    grammar: Any = None  # GrammarConstraint of a structured-output request


class Pooling:
    """An embedding input's running sum of last hidden states, and where its vector goes."""

    def __init__(self, loop: Any, result: Any) -> None:
        self.loop = loop
        self.result = result  # an asyncio future on ``loop``
        self.total: torch.Tensor | None = None

    def add(self, hidden: torch.Tensor) -> None:
        rows = hidden.float().sum(dim=0)
        self.total = rows if self.total is None else self.total + rows

    def vector(self, n_tokens: int) -> list[float]:
        """The embedding: the mean hidden state, L2-normalised."""
        return torch.nn.functional.normalize(self.total / n_tokens, dim=0).tolist()


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
        # prefix caching: hashes of the full blocks known so far; blocks [0, cache_synced) of the
        # table are registered as computed (see Engine._sync_blocks)
        self.block_hashes: list[bytes] = []
        self.cache_synced = 0
        self.cached_tokens = 0  # prompt tokens found in the prefix cache at admission
        self.report_cached = False  # usage carries cached_tokens (the engine caches prefixes)
        self.embedding: Pooling | None = None  # set for an embedding input (prefill only, pooled)
        self.detok = IncrementalDetokenizer(tokenizer)
        self.matcher = StopStringMatcher(prep.stop)
        self.text = ""
        self.emitted = 0  # characters of ``text`` already sent
        self.finished = False
        self.grammar = prep.grammar
        self.tokenizer = tokenizer
        self.pending_logprobs: list[TokenLogprob] | None = [] if prep.params.logprobs is not None else None
        self.arrival = time.monotonic()
        self.last_token_at: float | None = None
        self.metrics: Any = None  # EngineMetrics of the engine running it
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

    def hashes_upto(self, n_blocks: int) -> list[bytes]:
        """Content hashes of the first ``n_blocks`` full blocks of prompt + output."""
        have = len(self.block_hashes)
        if n_blocks > have:
            tokens = self.token_ids(n_blocks * BLOCK_SIZE)
            parent = self.block_hashes[-1] if have else ROOT_HASH
            self.block_hashes.extend(chain_hashes(tokens, have, parent))
        return self.block_hashes[:n_blocks]

    def token_ids(self, n: int) -> list[int]:
        """The first ``n`` tokens of prompt + output."""
        p = len(self.prompt_ids)
        if n <= p:
            return self.prompt_ids[:n]
        return self.prompt_ids + self.output_ids[: n - p]

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
        details = PromptTokensDetails(cached_tokens=self.cached_tokens) if self.report_cached else None
        return UsageInfo(prompt_tokens=p, completion_tokens=c, total_tokens=p + c, prompt_tokens_details=details)

    def append_token(self, token: int, logprob: Logprob | None = None) -> None:
        """Record a sampled token, stream any new text, and finish when a stop condition holds."""
        self.output_ids.append(token)
        finish = None
        text_ids = self.output_ids
        if self.grammar is not None:
            self.grammar.accept(token)
        if token in self.prep.stop_token_ids:
            finish = "stop"
            text_ids = self.output_ids[:-1]
        elif self.grammar is not None and self.grammar.terminated:
            finish = "stop"
        elif len(self.output_ids) >= self.prep.max_new_tokens:
            finish = "length"
        if logprob is not None and self.pending_logprobs is not None:
            # a stop token too (its text is not in the answer): one entry per sampled token, as
            # vLLM reports them; harnesses slice logprobs by token count
            self.pending_logprobs.append(logprob_entry(self.tokenizer, token, logprob))
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
            self.sink(GenerateChunk(text=delta, usage=self.usage(), logprobs=self._take_logprobs()))

    def _take_logprobs(self) -> list[TokenLogprob] | None:
        """The logprobs of the tokens sampled since the last chunk (their text may lag: stop
        strings and incomplete characters are held back)."""
        if self.pending_logprobs is None:
            return None
        out, self.pending_logprobs = self.pending_logprobs, []
        return out

    def finish(self, reason: str, delta: str = "", error: str | None = None, error_code: int = 0) -> None:
        if self.finished:
            return
        self.finished = True
        if self.metrics is not None:
            self.metrics.on_finish(self, reason)
        self.sink(GenerateChunk(text=delta, finish_reason=reason, usage=self.usage(), error=error,
                                error_code=error_code, logprobs=self._take_logprobs()))
