"""Where `orchestr chat` gets its replies: a running OpenAI-compatible API, or a model loaded here.

Both expose ``stream(messages, temperature, max_new_tokens) -> Iterator[str]`` (text deltas).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any


class ChatBackendError(Exception):
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
    """Load the configured model in this process and generate with transformers."""

    def __init__(self, model_cfg: Any):
        from transformers.utils import logging as hf_logging

        from orchestr.engine.loader import ModelLoadError, load_model_from_config
        from orchestr.engine.templates import ChatFormatter

        hf_logging.disable_progress_bar()  # the weight-loading bar would clutter the chat

        self.model_name = model_cfg.name
        try:
            self.model, self.tokenizer = load_model_from_config(model_cfg)
        except ModelLoadError as e:
            raise ChatBackendError(str(e)) from e
        self.formatter = ChatFormatter(self.tokenizer, model_cfg.conv_template)

    def stream(self, messages: list[dict], temperature: float, max_new_tokens: int) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        from orchestr.engine.templates import TemplateError

        try:
            prompt = self.formatter.format(messages)
        except TemplateError as e:
            raise ChatBackendError(str(e)) from e
        input_ids = self.tokenizer(
            prompt.text, return_tensors="pt", add_special_tokens=prompt.add_special_tokens
        ).input_ids.to(self.model.device)
        eos = self.model.generation_config.eos_token_id
        eos_ids = ([eos] if isinstance(eos, int) else list(eos or [])) + list(prompt.stop_token_ids)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": max_new_tokens,
            "streamer": streamer,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": eos_ids or None,
        }
        if temperature > 1e-5:
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        halt = threading.Event()
        kwargs["stopping_criteria"] = StoppingCriteriaList([_Halt(halt)])
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as e:  # surfaced in the caller's thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield from cut_at_stop(streamer, prompt.stop)
        finally:
            # A stop string, Ctrl-C or a closed generator: make generate() return promptly.
            # (The streamer's queue is unbounded, so the thread never blocks on it.)
            halt.set()
            thread.join()
        if errors:
            raise ChatBackendError(f"generation failed: {errors[0]!r}")


class _Halt:
    """A stopping criterion that ends generation when the event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


def cut_at_stop(deltas: Iterable[str], stops: Iterable[str]) -> Iterator[str]:
    """Relay text deltas up to the first stop string (excluded), holding back a possible prefix."""
    stops = [s for s in stops if s]
    if not stops:
        yield from deltas
        return
    hold = max(len(s) for s in stops) - 1
    buf = ""
    for d in deltas:
        buf += d
        hits = [i for i in (buf.find(s) for s in stops) if i >= 0]
        if hits:
            yield buf[: min(hits)]
            return
        if len(buf) > hold:
            yield buf[: len(buf) - hold]
            buf = buf[len(buf) - hold :]
    if buf:
        yield buf
