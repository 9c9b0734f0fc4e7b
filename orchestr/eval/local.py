"""Answering with a model loaded in this process (`eval.answer.backend=local`), no deployment needed.

The model runs on orchestr's batching engine through its synchronous façade (``orchestr.engine.llm``),
prompted with the engine's chat formatter (the tokenizer's template, or `model.conv_template`), as a
worker would. Questions answered from several threads (``eval.answer.parallel``) share the batch.
"""

from __future__ import annotations

import threading
from typing import Any

from orchestr.eval.client import RequestFailed
from orchestr.eval.errors import EvalError


class LocalResponder:
    def __init__(self, cfg: Any):
        from orchestr.engine.llm import LLM
        from orchestr.engine.loader import ModelLoadError

        m = cfg.model
        try:
            self.llm = LLM.from_config(m)
        except (ModelLoadError, ValueError) as e:
            raise EvalError(f"model {m.name}: {e}") from None
        self._last = threading.local()

    def chat(self, messages: list[dict[str, str]], temperature: float, max_tokens: int,
             json_schema: dict | None = None) -> str:
        from orchestr.engine.prompts import RequestError

        try:
            req = self.llm.request(messages, temperature=temperature, max_tokens=max_tokens, json_schema=json_schema)
            result = self.llm.generate(req)
        except RequestError as e:  # this request only (e.g. a prompt too long): counted as failed
            raise RequestFailed(f"model {self.llm.model_name}: {e}") from None
        self._last.tokens = (result.usage.prompt_tokens, result.usage.completion_tokens)
        return result.text

    def last_usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens of this thread's last request (the judge's token count)."""
        return getattr(self._last, "tokens", (0, 0))
