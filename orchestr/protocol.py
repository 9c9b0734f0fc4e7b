"""Wire shapes shared by the OpenAI API server, the controller and the workers.

Two families live here:

* OpenAI-compatible request/response models (what clients send to ``/v1/...``).
* Internal messages between API server, controller and workers.

No service builds these JSON bodies by hand: every hop serialises one of these models.
Worker streams are newline-delimited JSON, one ``GenerateChunk`` per line.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ModelPermission(BaseModel):
    id: str = Field(default_factory=lambda: _new_id("modelperm"))
    object: str = "model_permission"
    created: int = Field(default_factory=lambda: int(time.time()))
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
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "orchestr"
    root: str | None = None
    parent: str | None = None
    permission: list[ModelPermission] = Field(default_factory=lambda: [ModelPermission()])


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard] = Field(default_factory=list)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    # OpenAI allows a list of content parts; only text parts are supported here.
    content: str | list[dict[str, Any]] | None = ""
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"unsupported content part type {part.get('type')!r}: only 'text' is supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


SEED_LIMIT = 2**64  # seeds are unsigned 64-bit
MAX_TOKENS_LIMIT = 1_000_000  # far above any context; the context check gives the real answer
MAX_STOP = 4  # as OpenAI
MAX_PROMPTS = 64  # prompts in one /v1/completions request


class SamplingFields(BaseModel):
    """Parameters common to chat and text completions, validated like OpenAI does.

    Every number is bounded so nothing valid-looking can overflow or turn logits non-finite,
    and an unknown parameter is refused (400 naming it), never silently ignored.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=-1, ge=-1, le=MAX_TOKENS_LIMIT)
    n: int | None = Field(default=1, ge=1, le=16)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    stop: str | list[str] | None = Field(default=None)
    stream: bool | None = False
    presence_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=1.0, ge=0.01, le=100.0)
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are supported")
        return v

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


class ChatCompletionResponseChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length", "error"] | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _new_id("chatcmpl"))
    object: str = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: Literal["stop", "length", "error"] | None = None


class ChatCompletionStreamResponse(BaseModel):
    id: str = Field(default_factory=lambda: _new_id("chatcmpl"))
    object: str = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str]
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=16)
    stream_options: StreamOptions | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        if isinstance(v, list) and len(v) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return v


class CompletionResponseChoice(BaseModel):
    index: int
    text: str
    logprobs: Any | None = None
    finish_reason: Literal["stop", "length", "error"] | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _new_id("cmpl"))
    object: str = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionResponseChoice]
    usage: UsageInfo


class CompletionStreamResponse(BaseModel):
    id: str = Field(default_factory=lambda: _new_id("cmpl"))
    object: str = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionResponseChoice]
    usage: UsageInfo | None = None


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[str]
    user: str | None = None
    encoding_format: Literal["float", "base64"] | None = "float"


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
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
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


class GenerateChunk(BaseModel):
    """One line of a worker's stream. ``text`` is the new text since the previous chunk."""

    text: str = ""
    error_code: int = 0
    error: str | None = None
    finish_reason: Literal["stop", "length", "error"] | None = None
    usage: UsageInfo | None = None


class GenerateResult(BaseModel):
    """The whole answer of a non-streaming ``/worker_generate`` call."""

    text: str = ""
    error_code: int = 0
    error: str | None = None
    finish_reason: Literal["stop", "length", "error"] | None = None
    usage: UsageInfo = Field(default_factory=UsageInfo)


class EmbeddingRequest(BaseModel):
    model: str
    input: list[str]


class EmbeddingResult(BaseModel):
    embedding: list[list[float]] = Field(default_factory=list)
    token_num: int = 0
    error_code: int = 0
    error: str | None = None


class CountTokenRequest(BaseModel):
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


class CountTokenResult(BaseModel):
    count: int
    context_length: int


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
