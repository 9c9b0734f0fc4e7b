"""Wire shapes shared by the OpenAI API server, the controller and the workers.

Two families live here:

* OpenAI-compatible request/response models (what clients send to ``/v1/...``).
* Internal messages between API server, controller and workers.

No service builds these JSON bodies by hand: every hop serialises one of these models.
Worker streams are newline-delimited JSON, one ``GenerateChunk`` per line.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

# --------------------------------------------------------------------------- errors


class ErrorCode:
    """Numeric error codes carried by worker chunks (FastChat-compatible values)."""

    VALIDATION_TYPE_ERROR = 40001
    INVALID_AUTH_KEY = 40101
    INCORRECT_AUTH_KEY = 40102
    NO_PERMISSION = 40103
    INVALID_MODEL = 40301
    PARAM_OUT_OF_RANGE = 40302
    CONTEXT_OVERFLOW = 40303
    RATE_LIMIT = 42901
    QUOTA_EXCEEDED = 42902
    ENGINE_OVERLOADED = 42903
    INTERNAL_ERROR = 50001
    CUDA_OUT_OF_MEMORY = 50002
    GRADIO_REQUEST_ERROR = 50003
    GRADIO_STREAM_UNKNOWN_ERROR = 50004
    CONTROLLER_NO_WORKER = 50005
    CONTROLLER_WORKER_TIMEOUT = 50006


class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


# --------------------------------------------------------------------------- OpenAI shapes


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _id(prefix: str) -> Any:
    """A field whose default is a fresh OpenAI-style id (``chatcmpl-…``) per object."""
    return Field(default_factory=lambda: _new_id(prefix))


def _now() -> int:
    return int(time.time())


FinishReason = Literal["stop", "length", "error"]
ChatFinishReason = Literal["stop", "length", "tool_calls", "error"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # OpenAI's shape; set by engines that cache prefixes (the transformers worker), else absent
    prompt_tokens_details: PromptTokensDetails | None = None


class ModelPermission(BaseModel):
    id: str = _id("modelperm")
    object: str = "model_permission"
    created: int = Field(default_factory=_now)
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = True
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "orchestr"
    root: str | None = None
    parent: str | None = None
    permission: list[ModelPermission] = Field(default_factory=lambda: [ModelPermission()])


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard] = Field(default_factory=list)


class ToolCallFunction(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str = _id("call")
    type: Literal["function"] = "function"
    function: ToolCallFunction


# OpenAI allows content parts of several types; only text parts are supported here (and the
# schema says so: other parts are refused with a 400 naming their type)
TextPart = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"]})]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = ""
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates (Hugging Face's ``apply_chat_template``) expect it:
        tool call arguments as objects, the tool result's call id alongside."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            calls = []
            for c in self.tool_calls:
                try:
                    args: Any = json.loads(c.function.arguments)
                except ValueError:
                    args = c.function.arguments
                calls.append({"id": c.id, "type": "function",
                              "function": {"name": c.function.name, "arguments": args}})
            out["tool_calls"] = calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            out["name"] = self.name
        return out

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"unsupported content part type {part.get('type')!r}: only 'text' is supported")
            if not isinstance(part.get("text"), str):
                raise ValueError("a text content part needs its 'text' (a string)")
            parts.append(part["text"])
        return "".join(parts)


SEED_LIMIT = 2**64  # seeds are unsigned 64-bit
MAX_TOKENS_LIMIT = 1_000_000  # far above any context; the context check gives the real answer
MAX_STOP = 4  # as OpenAI
MIN_TOP_P = 1e-8  # (0, 1] as OpenAI, without denormals that round to 0 on the next hop
MAX_PROMPTS = 64  # prompts in one /v1/completions request

# Bounds the OpenAPI schema states, so what it calls valid the server accepts.
NonEmptyStr = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[int], Field(min_length=1)]
StopList = Annotated[list[str], Field(max_length=MAX_STOP)]


class SamplingFields(BaseModel):
    """Parameters common to chat and text completions, validated like OpenAI does.

    Every number is bounded so nothing valid-looking can overflow or turn logits non-finite,
    and an unknown parameter is refused (400 naming it), never silently ignored.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float | None = Field(default=1.0, ge=MIN_TOP_P, le=1.0)
    top_k: int | None = Field(default=-1, ge=-1, le=MAX_TOKENS_LIMIT)
    n: int | None = Field(default=1, ge=1, le=16)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    stop: str | StopList | None = Field(default=None)
    stream: bool | None = False
    presence_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=1.0, ge=0.01, le=100.0)
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    user: str | None = None
    logit_bias: dict[str, float] | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class ChatCompletionResponseChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: ChatFinishReason | None = None
    logprobs: dict[str, Any] | None = None


class _CompletionObject(BaseModel):
    """The head every (chat) completion object and stream chunk shares, in OpenAI's field order;
    each subclass gives ``id`` its prefix and ``object`` its type."""

    id: str
    object: str
    created: int = Field(default_factory=_now)
    model: str


class ChatCompletionResponse(_CompletionObject):
    id: str = _id("chatcmpl")
    object: str = "chat.completion"
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: ChatFinishReason | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionStreamResponse(_CompletionObject):
    id: str = _id("chatcmpl")
    object: str = "chat.completion.chunk"
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


class CompletionRequest(SamplingFields):
    model: str
    # text, texts, token ids (one prompt, any length up to the context), or lists of token ids
    prompt: (str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)] | TokenIds
             | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)])
    echo: bool | None = False
    suffix: Annotated[str, Field(max_length=0, description="not supported (empty or null only)")] | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=16)
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class CompletionResponseChoice(BaseModel):
    index: int
    text: str
    logprobs: Any | None = None
    finish_reason: FinishReason | None = None


class CompletionResponse(_CompletionObject):
    id: str = _id("cmpl")
    object: str = "text_completion"
    choices: list[CompletionResponseChoice]
    usage: UsageInfo


class CompletionStreamResponse(CompletionResponse):
    usage: UsageInfo | None = None  # on the last chunk only, when stream_options asks for it


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)] | TokenIds \
        | Annotated[list[TokenIds], Field(min_length=1)]
    user: str | None = None
    encoding_format: Literal["float", "base64"] | None = "float"
    # refused: this server's vectors have one fixed size (the schema says so: null only)
    dimensions: None = Field(default=None, description="not supported: the model's vectors have one size")


class EmbeddingData(BaseModel):
    object: str = "embedding"
    embedding: list[float] | str
    index: int


class EmbeddingsResponse(BaseModel):
    object: str = "list"
    data: list[EmbeddingData]
    model: str
    usage: UsageInfo


# --------------------------------------------------------------------------- worker messages


class GenerateRequest(BaseModel):
    """What the API server (or web UI, or test-message) sends to a worker.

    Exactly one of ``prompt`` (raw text, no template) and ``messages`` (chat turns the worker
    formats with the model's chat template) is set.
    """

    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    # Bounded here too: the web UI and other internal callers reach workers directly.
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, ge=MIN_TOP_P, le=1.0)
    top_k: int = Field(default=-1, ge=-1, le=MAX_TOKENS_LIMIT)
    repetition_penalty: float = Field(default=1.0, ge=0.01, le=100.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    max_new_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)  # None: up to the context
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    echo: bool = False
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    # token ids instead of ``prompt`` text (OpenAI's list-of-ints prompt)
    prompt_token_ids: list[int] | None = None
    # function definitions the chat template renders (OpenAI's ``tools``, ``{"type": "function", ...}``)
    tools: list[dict[str, Any]] | None = None
    # constrained decoding: the output is JSON valid against this schema ({"type": "object"}: any object)
    guided_json: dict[str, Any] | None = None
    # token id -> bias added to its logit (OpenAI's ``logit_bias``)
    logit_bias: dict[int, float] | None = None
    # per generated token: its logprob and this many top alternatives (None: no logprobs)
    logprobs: int | None = None
    # with ``echo``: logprobs of the prompt's tokens too
    prompt_logprobs: bool = False
    # a continuation (its first worker died mid-answer): the tokens already generated, which the
    # worker appends to the rendered prompt before generating on; the caller lowers
    # ``max_new_tokens`` by as many and advances ``seed`` (``continuation_of``)
    resume_token_ids: list[int] | None = None

    def continuation_of(self, generated: list[int]) -> GenerateRequest:
        """This request picked up after ``generated`` tokens (of every earlier attempt): the same
        prompt and sampling parameters, the budget reduced, the seed advanced by the tokens
        already drawn (deterministic: two continuations from one point sample alike), nothing
        echoed again."""
        max_new = None if self.max_new_tokens is None else max(self.max_new_tokens - len(generated), 1)
        seed = None if self.seed is None else (self.seed + len(generated)) % SEED_LIMIT
        return self.model_copy(update={"resume_token_ids": list(generated), "max_new_tokens": max_new, "seed": seed,
                                       "echo": False, "prompt_logprobs": False,
                                       "request_id": uuid.uuid4().hex})


class TopLogprob(BaseModel):
    token: str
    logprob: float
    id: int | None = None


class TokenLogprob(BaseModel):
    """One token's log probability (from the logits the sampler used) and its top alternatives."""

    token: str
    logprob: float | None = None  # None: the first prompt token (nothing conditions it)
    id: int | None = None
    top: list[TopLogprob] = Field(default_factory=list)


class GenerateChunk(BaseModel):
    """One line of a worker's stream. ``text`` is the new text since the previous chunk."""

    text: str = ""
    error_code: int = 0
    error: str | None = None
    finish_reason: FinishReason | None = None
    usage: UsageInfo | None = None
    # the tokens whose text this chunk (first: the echoed prompt's) carries, when logprobs were asked for
    logprobs: list[TokenLogprob] | None = None
    # the ids of the tokens generated since the previous chunk (their text may lag behind: stop
    # strings and incomplete characters are held back): what a continuation resumes from
    token_ids: list[int] | None = None


def coalesce_chunks(chunks: list[GenerateChunk]) -> list[GenerateChunk]:
    """Adjacent chunks of one stream as fewer chunks, losing nothing: a reader that fell behind
    (several tokens queued while it waited for the CPU) passes them on as one delta, so under
    load a step costs one line or event per stream instead of one per token. Merged: a chunk
    with no finish or error into the next one that has no error, when both or neither carry
    logprobs (then concatenated, in token order); usage counts are running totals, so the later
    chunk's stand. The result reads as the same answer (``GenerateResult.from_chunks``)."""
    out: list[GenerateChunk] = []
    for chunk in chunks:
        prev = out[-1] if out else None
        if (prev is not None and prev.finish_reason is None and not prev.error_code
                and prev.error is None and not chunk.error_code and chunk.error is None
                and (prev.logprobs is None) == (chunk.logprobs is None)):
            logprobs = None if prev.logprobs is None else [*prev.logprobs, *chunk.logprobs]
            ids = prev.token_ids if not chunk.token_ids else [*(prev.token_ids or []), *chunk.token_ids]
            out[-1] = GenerateChunk.model_construct(text=prev.text + chunk.text, error_code=0, error=None,
                                                    finish_reason=chunk.finish_reason,
                                                    usage=chunk.usage if chunk.usage is not None else prev.usage,
                                                    logprobs=logprobs, token_ids=ids)
        else:
            out.append(chunk)
    return out


class GenerateResult(BaseModel):
    """The whole answer of a non-streaming ``/worker_generate`` call."""

    text: str = ""
    error_code: int = 0
    error: str | None = None
    finish_reason: FinishReason | None = None
    usage: UsageInfo = Field(default_factory=UsageInfo)
    logprobs: list[TokenLogprob] | None = None

    @classmethod
    def from_chunks(cls, chunks: list[GenerateChunk]) -> GenerateResult:
        """Concatenate one request's stream."""
        last = chunks[-1] if chunks else GenerateChunk()
        lps = [lp for c in chunks for lp in (c.logprobs or [])]
        return cls(text="".join(c.text for c in chunks), error=last.error, error_code=last.error_code,
                   finish_reason=last.finish_reason, usage=last.usage or UsageInfo(),
                   logprobs=lps if any(c.logprobs is not None for c in chunks) else None)


class EmbeddingRequest(BaseModel):
    model: str
    input: list[str] = Field(default_factory=list)
    input_ids: list[list[int]] | None = None  # token-id inputs instead of texts


class EmbeddingResult(BaseModel):
    embedding: list[list[float]] = Field(default_factory=list)
    token_num: int = 0
    error_code: int = 0
    error: str | None = None


class CountTokenRequest(BaseModel):
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[dict[str, Any]] | None = None


class CountTokenResult(BaseModel):
    count: int
    context_length: int


class ResponsesRequest(BaseModel):
    """OpenAI's ``POST /v1/responses`` (the parts this server implements; others are refused)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=MIN_TOP_P, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    stream: bool | None = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    text: dict[str, Any] | None = None
    store: bool | None = True
    metadata: dict[str, str] | None = None
    user: str | None = None


class TokenizeRequest(BaseModel):
    """vLLM's ``/tokenize``: a prompt (raw) or chat messages (through the chat template)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class WorkerStatus(BaseModel):
    model_names: list[str]
    speed: int = 1
    queue_length: int = 0
    # Random per worker process: a registration may take over an address only from itself.
    worker_id: str | None = None


class ModelDetails(BaseModel):
    model: str
    context_length: int
    backend: str = "hf"
    dtype: str | None = None
    device: str | None = None
    tool_parser: str | None = None  # tool-call syntax of the chat template (hermes, llama3_json, mistral)


# --------------------------------------------------------------------------- controller messages


class RegisterWorkerRequest(BaseModel):
    worker_name: str  # the worker's base URL, e.g. http://127.0.0.1:21002
    check_heart_beat: bool = True
    worker_status: WorkerStatus | None = None
    multimodal: bool = False


class HeartBeatRequest(BaseModel):
    worker_name: str
    queue_length: int = 0
    worker_id: str | None = None


class WorkerFailureReport(BaseModel):
    """The API server could not use this worker: the controller checks it at once."""

    worker_name: str


class HeartBeatResponse(BaseModel):
    exist: bool


class WorkerAddressRequest(BaseModel):
    model: str


class WorkerAddressResponse(BaseModel):
    address: str  # "" when no worker serves the model


class ModelListResponse(BaseModel):
    models: list[str]


class WorkerInfoView(BaseModel):
    worker_name: str
    model_names: list[str]
    speed: int
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float


class ControllerStatus(BaseModel):
    model_names: list[str]
    speed: int
    queue_length: int
    workers: list[WorkerInfoView] = Field(default_factory=list)
