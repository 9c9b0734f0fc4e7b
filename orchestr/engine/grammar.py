"""Grammar-constrained sampling (structured outputs) with xgrammar.

xgrammar was measured against llguidance on this engine's CPU path (scripts/bench_grammar_mask.py,
SmolLM2's 49k vocabulary, 1/4/16 constrained rows): a step's masks cost 0.1/2.2/7 ms with
xgrammar against 800 (first use)/85/11 ms with llguidance; compiling a schema 0.2-0.4 s against
0.5-0.7 s. Compiled schemas are cached here.

Each constrained sequence owns a :class:`GrammarConstraint` (a matcher over a compiled grammar);
the sampler masks only that sequence's logit row, so unconstrained rows of the same batch pay
nothing.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import torch

from orchestr.engine.prompts import RequestError
from orchestr.protocol import ErrorCode

_CACHE_SIZE = 64


class GrammarCompiler:
    """Compiles JSON schemas for one tokenizer, caching the last few (a schema is compiled once,
    ~0.2-0.4 s on CPU; the matchers made from it are cheap)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                       stop_token_ids=sorted(stop_token_ids) or None)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def compile_json_schema(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            # compact JSON: a small model left free to emit whitespace may never stop
            compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError for unsupported schemas
            raise RequestError(f"cannot use this JSON schema for constrained decoding: {exc}",
                               ErrorCode.VALIDATION_TYPE_ERROR) from exc
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def constraint(self, schema: dict[str, Any]) -> GrammarConstraint:
        return GrammarConstraint(self._xgr, self.compile_json_schema(schema), self.vocab_size)


class GrammarConstraint:
    """The grammar state of one sequence: which tokens may come next."""

    def __init__(self, xgr: Any, compiled: Any, vocab_size: int) -> None:
        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.vocab_size = vocab_size
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask_(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf (``logits``: one fp32 CPU row)."""
        self.matcher.fill_next_token_bitmask(self.bitmask, 0)
        self._xgr.apply_token_bitmask_inplace(logits.view(1, -1), self.bitmask, vocab_size=self.vocab_size)

    def accept(self, token: int) -> bool:
        return bool(self.matcher.accept_token(token))

    @property
    def terminated(self) -> bool:
        return bool(self.matcher.is_terminated())
