"""Where `orchestr chat` gets its replies: a running OpenAI-compatible API, or a model loaded here.

Both expose ``stream(messages, temperature, max_new_tokens) -> Iterator[str]`` (text deltas).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from orchestr.errors import OrchestrError


class ChatBackendError(OrchestrError):
    """A failure to report to the user in one line (bad address, unknown model, ...)."""


class ApiBackend:
    """Chat through a running API server with the official openai SDK."""

    def __init__(self, api_base: str, model: str | None, api_key: str | None = None):
        import openai

        self._openai = openai
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = openai.OpenAI(base_url=api_base, api_key=key, max_retries=0)
        try:
            available = [m.id for m in self.client.models.list().data]
        except openai.APIConnectionError as e:
            raise ChatBackendError(f"cannot reach the API at {api_base}: {e}") from e
        except openai.APIError as e:
            raise ChatBackendError(f"the API at {api_base} refused to list models: {e}") from e
        if model is None:
            if not available:
                raise ChatBackendError(f"the API at {api_base} serves no model")
            model = available[0]
        elif model not in available:
            raise ChatBackendError(
                f"model {model!r} is not served at {api_base}; available: {', '.join(available)}"
            )
        self.model = model

    def stream(self, messages: list[dict], temperature: float, max_new_tokens: int) -> Iterator[str]:
        try:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=temperature,
                max_tokens=max_new_tokens,
                stream=True,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except self._openai.APIError as e:
            raise ChatBackendError(str(e)) from e


class LocalBackend:
    """Load the configured model in this process and generate through orchestr's engine
    (the same batching engine, sampler and stop handling as a worker)."""

    def __init__(self, model_cfg: Any):
        from transformers.utils import logging as hf_logging

        from orchestr.engine.llm import LLM
        from orchestr.engine.loader import ModelLoadError

        hf_logging.disable_progress_bar()  # the weight-loading bar would clutter the chat

        self.model_name = model_cfg.name
        try:
            self.llm = LLM.from_config(model_cfg)
        except (ModelLoadError, ValueError) as e:
            raise ChatBackendError(str(e)) from e

    def stream(self, messages: list[dict], temperature: float, max_new_tokens: int) -> Iterator[str]:
        from orchestr.engine.prompts import RequestError

        req = self.llm.request(messages, temperature=temperature, max_tokens=max_new_tokens)
        try:
            yield from self.llm.stream(req)
        except RequestError as e:
            raise ChatBackendError(str(e)) from e

    def close(self) -> None:
        self.llm.close()
