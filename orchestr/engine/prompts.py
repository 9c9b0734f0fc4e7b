"""What every engine (transformers or vLLM) does to a request before generating: render chat
messages with the model's template, tokenise, and refuse what cannot be served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestr.engine.templates import ChatFormatter, TemplateError
from orchestr.protocol import CountTokenRequest, ErrorCode, GenerateRequest


class RequestError(ValueError):
    """A request an engine refuses (bad parameters, prompt too long); goes back to the client."""

    def __init__(self, message: str, code: int = ErrorCode.PARAM_OUT_OF_RANGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    ids: list[int]
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()


def encode(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    if not ids:  # an empty prompt still needs one token to condition on
        fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [fallback if fallback is not None else 0]
    return ids


def render_prompt(formatter: ChatFormatter, tokenizer: Any, req: GenerateRequest | CountTokenRequest) -> RenderedPrompt:
    """Chat messages through the model's chat template (or ``conv_template``), a raw prompt as
    is, token ids as given."""
    if req.messages:
        try:
            messages = [m.template_dict() for m in req.messages]
            chat = formatter.format(messages, tools=getattr(req, "tools", None))
        except (TemplateError, ValueError) as exc:
            raise RequestError(str(exc), ErrorCode.VALIDATION_TYPE_ERROR) from exc
        return RenderedPrompt(chat.text, encode(tokenizer, chat.text, chat.add_special_tokens), tuple(chat.stop),
                              tuple(chat.stop_token_ids))
    ids = getattr(req, "prompt_token_ids", None)
    if ids is not None:
        vocab = len(tokenizer)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad or not ids:
            raise RequestError(f"prompt token ids must be a non-empty list of ids in [0, {vocab}); got {bad[:3]}",
                               ErrorCode.VALIDATION_TYPE_ERROR)
        return RenderedPrompt(tokenizer.decode(ids), list(ids))
    if req.prompt is None:
        raise RequestError("either prompt or messages is required", ErrorCode.VALIDATION_TYPE_ERROR)
    return RenderedPrompt(req.prompt, encode(tokenizer, req.prompt, True))
