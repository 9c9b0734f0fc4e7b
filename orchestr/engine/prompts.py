"""What every engine (transformers or vLLM) does to a request before generating: render chat
messages with the model's template, tokenise, and refuse what cannot be served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestr.engine.templates import ChatFormatter, TemplateError
from orchestr.protocol import (
    CountTokenRequest,
    CountTokenResult,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorCode,
    GenerateChunk,
    GenerateRequest,
    ModelDetails,
    TokenizeRequest,
    TokenizeResponse,
)


class RequestError(ValueError):
    """A request an engine refuses (bad parameters, prompt too long); goes back to the client."""

    def __init__(self, message: str, code: int = ErrorCode.PARAM_OUT_OF_RANGE) -> None:
        super().__init__(message)
        self.code = code


# GenerateRequest fields beyond plain sampling, which not every engine implements
OPTIONAL_FEATURES = {"guided_json": "response_format / forced tool calls", "logprobs": "logprobs",
                     "logit_bias": "logit_bias", "prompt_logprobs": "echo with logprobs"}


def refusal_chunk(exc: ValueError) -> GenerateChunk:
    """A request refused before generating, as its stream's one chunk: a :class:`RequestError`
    with its code; any other ValueError is a backend's "the prompt fills the context"."""
    code = exc.code if isinstance(exc, RequestError) else ErrorCode.CONTEXT_OVERFLOW
    return GenerateChunk(error=str(exc), error_code=code, finish_reason="error")


def refuse_unsupported(req: GenerateRequest, backend: str, supported: frozenset[str] = frozenset()) -> None:
    """A request asking for a feature ``backend`` lacks is refused, naming it (never ignored)."""
    for name, what in OPTIONAL_FEATURES.items():
        if name not in supported and getattr(req, name) not in (None, False):
            raise RequestError(f"{what} is not supported by the {backend} backend", ErrorCode.VALIDATION_TYPE_ERROR)


def refuse_resumed_grammar(req: GenerateRequest, backend: str) -> None:
    """A structured-output continuation needs its grammar advanced over the tokens already
    generated; only the transformers engine can (vLLM's and OpenVINO's grammars start afresh)."""
    if req.resume_token_ids and req.guided_json is not None:
        raise RequestError(f"a structured-output answer cannot be continued on the {backend} backend",
                           ErrorCode.VALIDATION_TYPE_ERROR)


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
    is, token ids as given; a continuation's already generated tokens after it."""
    prompt = _render(formatter, tokenizer, req)
    resumed = getattr(req, "resume_token_ids", None)
    if not resumed:
        return prompt
    vocab = len(tokenizer)
    bad = [t for t in resumed if not 0 <= t < vocab]
    if bad:
        raise RequestError(f"resume token ids must be ids in [0, {vocab}); got {bad[:3]}",
                           ErrorCode.VALIDATION_TYPE_ERROR)
    return RenderedPrompt(prompt.text, [*prompt.ids, *resumed], prompt.stop, prompt.stop_token_ids)


def _render(formatter: ChatFormatter, tokenizer: Any, req: GenerateRequest | CountTokenRequest) -> RenderedPrompt:
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


def tokenize(formatter: ChatFormatter, tokenizer: Any, req: TokenizeRequest, context_len: int) -> TokenizeResponse:
    """vLLM's ``/tokenize``: chat messages through the template, a raw prompt with or without
    the tokenizer's special tokens."""
    if req.messages:
        ids = render_prompt(formatter, tokenizer, CountTokenRequest(model=req.model or "", messages=req.messages,
                                                                    tools=req.tools)).ids
    elif req.prompt is not None:
        ids = list(tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"])
    else:
        raise RequestError("either prompt or messages is required", ErrorCode.VALIDATION_TYPE_ERROR)
    strs = tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=context_len, tokens=ids, token_strs=strs)


def detokenize(tokenizer: Any, req: DetokenizeRequest) -> DetokenizeResponse:
    vocab = len(tokenizer)
    if any(not 0 <= t < vocab for t in req.tokens):
        raise RequestError(f"token ids must be in [0, {vocab})", ErrorCode.VALIDATION_TYPE_ERROR)
    return DetokenizeResponse(prompt=tokenizer.decode(req.tokens))


def tokenizer_info(tokenizer: Any, context_len: int) -> dict[str, Any]:
    """vLLM's ``/tokenizer_info``: what a client needs to tokenize as the server does (special
    tokens and their ids, the chat template, the class to load)."""
    info: dict[str, Any] = {"tokenizer_class": type(tokenizer).__name__, "model_max_length": context_len,
                            "vocab_size": len(tokenizer), "chat_template": getattr(tokenizer, "chat_template", None)}
    for name in ("bos", "eos", "pad", "unk"):
        info[f"{name}_token"] = getattr(tokenizer, f"{name}_token", None)
        info[f"{name}_token_id"] = getattr(tokenizer, f"{name}_token_id", None)
    info["add_bos_token"] = bool(getattr(tokenizer, "add_bos_token", False))
    return info


class PromptEndpoints:
    """The per-model calls every engine (transformers, vLLM, OpenVINO) answers the same way, from
    its tokenizer and chat template: prompt rendering, token counts, ``/tokenize``,
    ``/detokenize``, ``/tokenizer_info`` and the model's details. The engine sets ``formatter``,
    ``tokenizer``, ``context_len``, ``model_name``, ``backend``, ``dtype_name`` and ``device``."""

    formatter: ChatFormatter
    tokenizer: Any
    context_len: int
    model_name: str
    backend: str
    dtype_name: str
    device: Any

    def prompt_of(self, req: GenerateRequest | CountTokenRequest) -> RenderedPrompt:
        return render_prompt(self.formatter, self.tokenizer, req)

    def count_tokens(self, req: CountTokenRequest) -> CountTokenResult:
        return CountTokenResult(count=len(self.prompt_of(req).ids), context_length=self.context_len)

    def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        return tokenize(self.formatter, self.tokenizer, req, self.context_len)

    def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        return detokenize(self.tokenizer, req)

    def tokenizer_info(self) -> dict:
        return tokenizer_info(self.tokenizer, self.context_len)

    def model_details(self, name: str | None = None) -> ModelDetails:
        return ModelDetails(model=name or self.model_name, context_length=self.context_len, backend=self.backend,
                            dtype=self.dtype_name, device=str(self.device), tool_parser=self.formatter.tool_family)
