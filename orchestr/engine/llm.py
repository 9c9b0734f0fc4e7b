"""A synchronous façade over the batching :class:`~orchestr.engine.engine.Engine` (as vLLM's
``LLM`` over its engine), for code that runs in-process without a worker: terminal chat, in-process
eval, an in-process judge. Calls from several threads share the engine's continuous batch, so
concurrent callers are served together with the engine's sampler and stop handling.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from typing import Any

from orchestr.config.serving import EngineConfig
from orchestr.engine.engine import Engine
from orchestr.engine.prompts import RequestError
from orchestr.protocol import ChatMessage, ErrorCode, GenerateChunk, GenerateRequest, GenerateResult

_END = object()


class LLM:
    """``generate``/``chat`` (blocking) and ``stream`` (text deltas) over one engine.

    ``json_schema`` constrains the output to JSON valid against it (``{"type": "object"}``: any
    JSON object) by grammar-masked sampling, as the API's ``response_format`` does.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="orchestr-llm", daemon=True)
        self._thread.start()
        engine.start()

    @classmethod
    def from_config(cls, model_cfg: Any, engine_cfg: EngineConfig | None = None) -> LLM:
        """Load ``model_cfg`` (a ``conf/model`` config) into a started engine."""
        from orchestr.engine.loader import load_model_from_config

        model, tokenizer = load_model_from_config(model_cfg)
        engine = Engine(model, tokenizer, engine_cfg, conv_template=model_cfg.conv_template,
                        model_name=model_cfg.name)
        return cls(engine)

    def close(self) -> None:
        self.engine.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def request(self, messages: list[dict] | None = None, prompt: str | None = None, *, temperature: float = 0.7,
                max_tokens: int | None = None, json_schema: dict | None = None, **params: Any) -> GenerateRequest:
        """A ``GenerateRequest`` for chat ``messages`` (OpenAI dicts) or a raw ``prompt``; other
        keyword arguments are ``GenerateRequest`` fields (top_p, stop, seed, logprobs, ...)."""
        msgs = [ChatMessage.model_validate(m) for m in messages] if messages is not None else None
        return GenerateRequest(model=self.model_name, messages=msgs, prompt=prompt, temperature=temperature,
                               max_new_tokens=max_tokens, guided_json=json_schema, **params)

    def generate(self, req: GenerateRequest) -> GenerateResult:
        """The whole answer; raises :class:`RequestError` when the engine refuses the request."""
        result = asyncio.run_coroutine_threadsafe(self.engine.generate(req), self._loop).result()
        if result.error_code:
            raise RequestError(result.error or "generation failed", result.error_code)
        return result

    def chat(self, messages: list[dict], temperature: float = 0.7, max_tokens: int | None = None,
             json_schema: dict | None = None, **params: Any) -> str:
        req = self.request(messages, temperature=temperature, max_tokens=max_tokens, json_schema=json_schema,
                           **params)
        return self.generate(req).text

    def stream(self, req: GenerateRequest) -> Iterator[str]:
        """Text deltas as they are generated. Closing the iterator (a ``break``, Ctrl-C) cancels
        the request in the engine."""
        out: queue.SimpleQueue = queue.SimpleQueue()

        async def pump() -> None:
            try:
                async for chunk in self.engine.generate_stream(req):
                    out.put(chunk)
            except BaseException as exc:  # cancelled, or a failure to hand to the caller
                out.put(exc)
                raise
            finally:
                out.put(_END)

        fut = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                chunk: GenerateChunk = item
                if chunk.error_code or chunk.finish_reason == "error":
                    raise RequestError(chunk.error or "generation failed", chunk.error_code or ErrorCode.INTERNAL_ERROR)
                if chunk.text:
                    yield chunk.text
        finally:
            fut.cancel()  # no-op when finished; else closes the engine stream, which aborts the request
