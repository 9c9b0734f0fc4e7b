"""The work behind the OpenAI API routes: find a worker through the controller, call it, shape answers.

Routes in ``openai_api_server`` only authenticate and parse; everything here raises ``ApiError``
for anything a client should see as an OpenAI error.

Overhead matters (the API + controller hop must stay within a few percent of calling the worker
directly), so: worker calls go through one pooled lean HTTP/1.1 client (``stream_client``; a
pooled ``httpx.AsyncClient`` talks to the controller); the controller's worker table is cached for a
short TTL and a model with a single worker is dispatched without asking the controller; the
token-count round trip is skipped when a byte-length bound already proves the prompt fits; worker
streams are relayed chunk by chunk, never re-buffered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

import httpx
from pydantic import BaseModel

from orchestr.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    ControllerStatus,
    CountTokenRequest,
    CountTokenResult,
    DeltaMessage,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResult,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorCode,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    ModelCard,
    ModelDetails,
    ModelList,
    ModelListResponse,
    UsageInfo,
    WorkerAddressResponse,
)
from orchestr.services.http_util import error_body
from orchestr.services.stream_client import StreamBroken, StreamClient, StreamConnectError

logger = logging.getLogger("orchestr.api")

T = TypeVar("T")

# Upper bound of the tokens a chat template adds (system prompt, role markers): used only to
# decide whether the exact /count_token call can be skipped.
TEMPLATE_OVERHEAD_TOKENS = 256
PER_MESSAGE_OVERHEAD_TOKENS = 16
UNREACHABLE_SKIP_S = 10.0  # how long a worker that refused a connection is not dispatched to
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and FastChat's) default for /v1/completions


class ApiError(Exception):
    """An error the client sees as ``{"error": {...}}`` with this HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code).model_dump()


class WorkerUnreachable(Exception):
    """The worker did not accept the connection: try another one."""


def worker_error(code: int, message: str | None) -> ApiError:
    """Map a worker's numeric error code to the HTTP error a client should get."""
    message = message or "the model worker reported an error"
    if code == ErrorCode.CONTEXT_OVERFLOW:
        return ApiError(400, message, param="messages", code="context_length_exceeded")
    if code in (ErrorCode.PARAM_OUT_OF_RANGE, ErrorCode.VALIDATION_TYPE_ERROR):
        return ApiError(400, message, code="invalid_value")
    if code == ErrorCode.INVALID_MODEL:
        return ApiError(404, message, param="model", code="model_not_found")
    if code in (ErrorCode.ENGINE_OVERLOADED, ErrorCode.RATE_LIMIT):
        return ApiError(429, message, type_="rate_limit_error", code="engine_overloaded")
    return ApiError(500, message, type_="server_error", code=code or "internal_error")


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


SSE_DONE = "data: [DONE]\n\n"


Batch = list[GenerateChunk]  # the chunks one network read delivered


@dataclass
class _Stream:
    """An open worker stream whose first batch has already been read (to catch early errors)."""

    index: int
    first: Batch
    rest: AsyncIterator[Batch]

    async def batches(self) -> AsyncIterator[Batch]:
        if self.first:
            yield self.first
        async for b in self.rest:
            yield b

    async def aclose(self) -> None:
        await self.rest.aclose()  # type: ignore[attr-defined]


class ApiClient:
    def __init__(
        self,
        controller_address: str,
        worker_timeout: float = 600.0,
        controller_cache_ttl: float = 2.0,
    ):
        self.controller = controller_address.rstrip("/")
        self.cache_ttl = controller_cache_ttl
        # Generation can queue behind other requests: long reads; no pool limit worth hitting
        # (a throughput benchmark opens hundreds of concurrent streams).
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=worker_timeout, write=60.0, pool=worker_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        self.streams = StreamClient(connect_timeout=10.0, read_timeout=worker_timeout)
        self._status: ControllerStatus | None = None
        self._status_at = 0.0
        self._refresh: asyncio.Future | None = None
        self._unreachable: dict[str, float] = {}  # worker -> until when it is skipped
        self._seen_models: set[str] = set()  # every model ever registered: 503 (down), not 404
        self._details: dict[tuple[str, str], ModelDetails | None] = {}

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.streams.aclose()

    # ------------------------------------------------------------------ controller

    async def _post_controller(self, path: str, body: dict | None = None) -> dict:
        try:
            r = await self.http.post(self.controller + path, json=body or {}, timeout=10.0)
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise ApiError(
                503,
                f"controller {self.controller} is unreachable: {e}",
                "service_unavailable",
                code="no_controller",
            ) from e

    async def _workers_table(self, force: bool = False) -> ControllerStatus:
        if not force and self._status is not None and time.monotonic() - self._status_at <= self.cache_ttl:
            return self._status
        # Single flight: concurrent requests that find the table stale share one controller call.
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(self._fetch_table())
            self._refresh.add_done_callback(self._refresh_done)
        return await asyncio.shield(self._refresh)

    async def _fetch_table(self) -> ControllerStatus:
        status = ControllerStatus.model_validate(await self._post_controller("/worker_get_status"))
        self._status, self._status_at = status, time.monotonic()
        self._seen_models.update(status.model_names)
        return status

    def _refresh_done(self, task: asyncio.Future) -> None:
        self._refresh = None
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not reported as lost

    def _invalidate(self) -> None:
        self._status_at = 0.0

    async def list_models(self) -> ModelList:
        models = ModelListResponse.model_validate(await self._post_controller("/list_models")).models
        self._seen_models.update(models)
        return ModelList(data=[ModelCard(id=m, root=m) for m in models])

    async def retrieve_model(self, model: str) -> ModelCard:
        models = await self.list_models()
        for card in models.data:
            if card.id == model:
                return card
        raise self._unknown_model(model)

    def _unknown_model(self, model: str) -> ApiError:
        return ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    async def worker_for(self, model: str, exclude: set[str] = frozenset()) -> str:  # type: ignore[assignment]
        table = await self._workers_table()
        names = [w.worker_name for w in table.workers if model in w.model_names]
        if not names:  # maybe it registered since we last looked
            table = await self._workers_table(force=True)
            names = [w.worker_name for w in table.workers if model in w.model_names]
        now = time.monotonic()
        names = [n for n in names if n not in exclude and self._unreachable.get(n, 0.0) < now]
        if not names:
            if model in self._seen_models:
                raise ApiError(
                    503,
                    f"No worker is serving model `{model}` right now; try again later.",
                    "service_unavailable",
                    param="model",
                    code="no_worker",
                )
            raise self._unknown_model(model)
        if len(names) == 1:
            return names[0]
        # Several workers: the controller's dispatch method decides (it tracks queue lengths).
        addr = WorkerAddressResponse.model_validate(
            await self._post_controller("/get_worker_address", {"model": model})
        ).address
        return addr if addr in names else random.choice(names)

    async def _on_worker(self, model: str, call: Callable[[str], Awaitable[T]]) -> T:
        """Run ``call(worker_address)``; if the worker is gone, retry once on another worker."""
        tried: set[str] = set()
        for _ in range(2):
            addr = await self.worker_for(model, tried)
            try:
                return await call(addr)
            except WorkerUnreachable:
                logger.warning("worker %s for %s is unreachable", addr, model)
                tried.add(addr)
                # Skip it for a while: the controller lists it until its heartbeats expire.
                self._unreachable[addr] = time.monotonic() + UNREACHABLE_SKIP_S
                self._invalidate()
        raise ApiError(
            503,
            f"The worker serving `{model}` is unreachable.",
            "service_unavailable",
            code="worker_unreachable",
        )

    # ------------------------------------------------------------------ worker calls

    async def _post_worker(self, addr: str, path: str, body: str, timeout: float | None = None) -> dict:
        """POST JSON to a worker and parse the JSON answer (same lean client as the streams)."""
        try:
            coro = self._post_worker_raw(addr + path, body.encode())
            status, data = await (asyncio.wait_for(coro, timeout) if timeout else coro)
        except StreamConnectError as e:
            raise WorkerUnreachable(str(e)) from e
        except (StreamBroken, TimeoutError) as e:
            raise ApiError(502, f"worker request failed: {e!r}", "server_error", code="worker_error") from e
        if status >= 400:
            raise self._worker_http_error(status, data.decode(errors="replace"))
        try:
            return json.loads(data)
        except ValueError as e:
            raise ApiError(
                502, f"the worker answered invalid JSON: {e}", "server_error", code="worker_error"
            ) from e

    async def _post_worker_raw(self, url: str, body: bytes) -> tuple[int, bytes]:
        resp = await self.streams.post(url, body)
        return resp.status, await resp.read()

    @staticmethod
    def _worker_http_error(status: int, text: str) -> ApiError:
        if status == 404:
            return ApiError(
                502, "the worker does not implement this endpoint", "server_error", code="worker_error"
            )
        return ApiError(
            502, f"worker answered HTTP {status}: {text[:500]}", "server_error", code="worker_error"
        )

    async def _model_details(self, addr: str, model: str) -> ModelDetails | None:
        key = (addr, model)
        if key not in self._details:
            try:
                data = await self._post_worker(
                    addr, "/model_details", json.dumps({"model": model}), timeout=10.0
                )
                self._details[key] = ModelDetails.model_validate(data)
            except (ApiError, ValueError) as e:
                logger.warning("no model details from %s: %s", addr, e)
                self._details[key] = None
        return self._details[key]

    async def _check_length(self, addr: str, g: GenerateRequest, param: str) -> None:
        """400 context_length_exceeded when prompt + max_new_tokens cannot fit the model's context."""
        details = await self._model_details(addr, g.model)
        if details is None or not details.context_length:
            return
        ctx = details.context_length
        budget = g.max_new_tokens or 0
        if g.messages is not None:
            n_bytes = sum(len(m.text().encode()) for m in g.messages)
            bound = n_bytes + TEMPLATE_OVERHEAD_TOKENS + PER_MESSAGE_OVERHEAD_TOKENS * len(g.messages)
        else:
            bound = len((g.prompt or "").encode()) + 8
        if bound + budget < ctx:  # byte-level tokenizers give at most one token per byte
            return
        count = CountTokenResult.model_validate(
            await self._post_worker(
                addr,
                "/count_token",
                CountTokenRequest(model=g.model, prompt=g.prompt, messages=g.messages).model_dump_json(),
                timeout=30.0,
            )
        ).count
        if count >= ctx or count + budget > ctx:
            where = "messages" if g.messages is not None else "prompt"
            raise ApiError(
                400,
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{count + budget} tokens ({count} in the {where}, {budget} in the completion). "
                f"Please reduce the length of the {where} or completion.",
                param=param,
                code="context_length_exceeded",
            )

    async def _generate(self, g: GenerateRequest, param: str) -> GenerateResult:
        async def call(addr: str) -> GenerateResult:
            await self._check_length(addr, g, param)
            result = GenerateResult.model_validate(
                await self._post_worker(addr, "/worker_generate", g.model_dump_json())
            )
            if result.error_code:
                raise worker_error(result.error_code, result.error)
            return result

        return await self._on_worker(g.model, call)

    async def _open_stream(self, index: int, g: GenerateRequest, param: str) -> _Stream:
        async def call(addr: str) -> _Stream:
            await self._check_length(addr, g, param)
            try:
                resp = await self.streams.post(addr + "/worker_generate_stream", g.model_dump_json().encode())
            except StreamConnectError as e:
                raise WorkerUnreachable(str(e)) from e
            except StreamBroken as e:
                raise ApiError(502, f"worker request failed: {e}", "server_error", code="worker_error") from e
            if resp.status >= 400:
                try:
                    text = (await resp.read()).decode(errors="replace")
                except StreamBroken:
                    text = ""
                raise self._worker_http_error(resp.status, text)

            async def batches() -> AsyncIterator[Batch]:
                # Every complete NDJSON line that one read brought, parsed together: under load
                # several tokens can arrive at once and leave as one write instead of several.
                pending = b""
                try:
                    async for data in resp.iter_blocks():
                        pending += data
                        *lines, pending = pending.split(b"\n")
                        batch = [GenerateChunk.model_validate_json(x) for x in lines if x.strip()]
                        if batch:
                            yield batch
                    if pending.strip():
                        yield [GenerateChunk.model_validate_json(pending)]
                finally:
                    await resp.aclose()

            it = batches()
            # Read the first batch before answering so that early errors (bad params, context
            # overflow, overload) still get a proper HTTP status instead of a 200 + error event.
            try:
                first = await it.__anext__()
            except StopAsyncIteration:
                first = []
            except (StreamBroken, ValueError) as e:
                await it.aclose()
                raise ApiError(
                    502, f"worker stream failed: {e!r}", "server_error", code="worker_error"
                ) from e
            if first and first[0].error_code:
                await it.aclose()
                raise worker_error(first[0].error_code, first[0].error)
            return _Stream(index, first, it)

        return await self._on_worker(g.model, call)

    async def _open_streams(self, jobs: list[tuple[int, GenerateRequest]], param: str) -> list[_Stream]:
        opened = await asyncio.gather(
            *(self._open_stream(i, g, param) for i, g in jobs), return_exceptions=True
        )
        errors = [o for o in opened if isinstance(o, BaseException)]
        if errors:
            for o in opened:
                if isinstance(o, _Stream):
                    await o.aclose()
            raise errors[0]
        return opened  # type: ignore[return-value]

    async def embed(self, req: EmbeddingsRequest) -> EmbeddingsResponse:
        inputs = [req.input] if isinstance(req.input, str) else list(req.input)
        if not inputs:
            raise ApiError(400, "input must not be empty", param="input")

        async def call(addr: str) -> EmbeddingResult:
            body = EmbeddingRequest(model=req.model, input=inputs).model_dump_json()
            return EmbeddingResult.model_validate(
                await self._post_worker(addr, "/worker_get_embeddings", body)
            )

        result = await self._on_worker(req.model, call)
        if result.error_code:
            raise worker_error(result.error_code, result.error)
        data = []
        for i, vec in enumerate(result.embedding):
            emb: list[float] | str = vec
            if req.encoding_format == "base64":
                emb = base64.b64encode(array("f", vec).tobytes()).decode()
            data.append(EmbeddingData(embedding=emb, index=i))
        usage = UsageInfo(prompt_tokens=result.token_num, total_tokens=result.token_num)
        return EmbeddingsResponse(data=data, model=req.model, usage=usage)

    # ------------------------------------------------------------------ chat completions

    async def chat(self, req: ChatCompletionRequest) -> ChatCompletionResponse | AsyncIterator[str]:
        for i, m in enumerate(req.messages):
            try:
                m.text()
            except ValueError as e:
                raise ApiError(400, str(e), param=f"messages.{i}.content") from e
        max_new = req.max_completion_tokens or req.max_tokens
        param = "messages"
        jobs = [
            (i, _generate_request(req, i, messages=req.messages, max_new=max_new)) for i in range(req.n or 1)
        ]
        if req.stream:
            streams = await self._open_streams(jobs, param)
            return self._chat_stream(req, streams)
        results = await asyncio.gather(*(self._generate(g, param) for _, g in jobs))
        choices = [
            ChatCompletionResponseChoice(
                index=i,
                message=ChatMessage(role="assistant", content=r.text),
                finish_reason=r.finish_reason or "stop",
            )
            for i, r in enumerate(results)
        ]
        return ChatCompletionResponse(model=req.model, choices=choices, usage=_sum_usage(results, req.n or 1))

    async def _chat_stream(self, req: ChatCompletionRequest, streams: list[_Stream]) -> AsyncIterator[str]:
        proto = ChatCompletionStreamResponse(model=req.model, choices=[])
        fast = _FastSse(proto, "delta")

        def chunk(index: int, delta: DeltaMessage, finish: str | None = None) -> str:
            choice = ChatCompletionStreamChoice(index=index, delta=delta, finish_reason=finish)
            return sse(proto.model_copy(update={"choices": [choice]}).model_dump_json(exclude={"usage"}))

        yield "".join(chunk(s.index, DeltaMessage(role="assistant", content="")) for s in streams)

        def render(index: int, c: GenerateChunk) -> list[str]:
            out = [fast.chat(index, c.text)] if c.text else []
            if c.finish_reason is not None:
                out.append(chunk(index, DeltaMessage(), c.finish_reason))
            return out

        include_usage = bool((req.stream_options or {}).get("include_usage"))
        async with aclosing(_sse_relay(streams, render, proto, include_usage, len(streams))) as lines:
            async for line in lines:
                yield line

    # ------------------------------------------------------------------ text completions

    async def complete(self, req: CompletionRequest) -> CompletionResponse | AsyncIterator[str]:
        if req.suffix:
            raise ApiError(400, "suffix is not supported", param="suffix")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        n = req.n or 1
        max_new = req.max_tokens if req.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        jobs = [
            (p * n + i, _generate_request(req, i, prompt=prompt, max_new=max_new))
            for p, prompt in enumerate(prompts)
            for i in range(n)
        ]
        if req.stream:
            streams = await self._open_streams(jobs, "prompt")
            return self._completion_stream(req, streams, prompts, n)
        results = await asyncio.gather(*(self._generate(g, "prompt") for _, g in jobs))
        choices = [
            CompletionResponseChoice(
                index=idx,
                text=(prompts[idx // n] if req.echo else "") + r.text,
                finish_reason=r.finish_reason or "stop",
            )
            for (idx, _), r in zip(jobs, results, strict=True)
        ]
        return CompletionResponse(model=req.model, choices=choices, usage=_sum_usage(results, n))

    async def _completion_stream(
        self, req: CompletionRequest, streams: list[_Stream], prompts: list[str], n: int
    ) -> AsyncIterator[str]:
        proto = CompletionStreamResponse(model=req.model, choices=[])
        fast = _FastSse(proto, "text")

        def chunk(index: int, text: str, finish: str | None = None) -> str:
            choice = CompletionResponseChoice(index=index, text=text, finish_reason=finish)
            return sse(proto.model_copy(update={"choices": [choice]}).model_dump_json(exclude={"usage"}))

        if req.echo:
            yield "".join(chunk(s.index, prompts[s.index // n]) for s in streams)

        def render(index: int, c: GenerateChunk) -> list[str]:
            if c.finish_reason is not None:
                return [chunk(index, c.text, c.finish_reason)]
            return [fast.completion(index, c.text)] if c.text else []

        include_usage = bool((req.stream_options or {}).get("include_usage"))
        async with aclosing(_sse_relay(streams, render, proto, include_usage, n)) as lines:
            async for line in lines:
                yield line


# --------------------------------------------------------------------------- helpers


def _generate_request(
    req: ChatCompletionRequest | CompletionRequest,
    choice: int,
    *,
    messages: list[ChatMessage] | None = None,
    prompt: str | None = None,
    max_new: int | None,
) -> GenerateRequest:
    defaults = GenerateRequest.model_fields

    def pick(name: str):
        value = getattr(req, name)
        return defaults[name].default if value is None else value

    # n choices of one request must differ: vary the seed per choice when one is given.
    seed = None if req.seed is None else req.seed + choice
    return GenerateRequest(
        model=req.model,
        prompt=prompt,
        messages=messages,
        temperature=pick("temperature"),
        top_p=pick("top_p"),
        top_k=pick("top_k"),
        repetition_penalty=pick("repetition_penalty"),
        presence_penalty=pick("presence_penalty"),
        frequency_penalty=pick("frequency_penalty"),
        max_new_tokens=max_new,
        stop=req.stop_list(),
        seed=seed,
    )


@dataclass
class _Usage:
    usage: UsageInfo | None


def _sum_usage(results: list, n: int) -> UsageInfo:
    """Completion tokens of every choice; prompt tokens once per prompt (choices share it)."""
    prompt = completion = 0
    for i, r in enumerate(results):
        u = r.usage
        if u is None:
            continue
        completion += u.completion_tokens
        if i % n == 0:
            prompt += u.prompt_tokens
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _json(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)


class _FastSse:
    """Text-only stream events rendered from a pre-serialised head: the per-token hot path.

    Same JSON as the pydantic models produce for a chunk with one choice carrying only text.
    """

    def __init__(self, proto: BaseModel, kind: str):
        head = proto.model_dump_json(exclude={"choices", "usage"})[:-1]  # drop the closing brace
        self.head = f'data: {head},"choices":[{{"index":'
        self.kind = kind

    def chat(self, index: int, text: str) -> str:
        return f'{self.head}{index},"delta":{{"content":{_json(text)}}},"finish_reason":null}}]}}\n\n'

    def completion(self, index: int, text: str) -> str:
        return f'{self.head}{index},"text":{_json(text)},"logprobs":null,"finish_reason":null}}]}}\n\n'


async def _sse_relay(
    streams: list[_Stream],
    render: Callable[[int, GenerateChunk], list[str]],
    proto: BaseModel,
    include_usage: bool,
    n: int,
) -> AsyncIterator[str]:
    """Worker chunks -> SSE text, shared by chat and text completions.

    ``render`` turns one chunk into that API's events; a worker error ends the stream with an
    error event; the usage event (summed over the choices, when asked for) and ``[DONE]`` close it.
    """
    usages: dict[int, UsageInfo] = {}
    async with aclosing(_relay(streams)) as batches:
        async for index, batch, error in batches:
            out: list[str] = []
            for c in batch:
                if c.usage is not None:
                    usages[index] = c.usage
                out += render(index, c)
            if error is not None:
                out.append(sse(_json(error.body())))
            if out:
                yield "".join(out)
            if error is not None:
                break
    if include_usage:
        usage = _sum_usage([_Usage(usages.get(s.index)) for s in streams], n)
        yield sse(proto.model_copy(update={"usage": usage}).model_dump_json())
    yield SSE_DONE


async def _relay(streams: list[_Stream]) -> AsyncIterator[tuple[int, Batch, ApiError | None]]:
    """Yield (choice index, batch, error) from all streams as batches arrive.

    An error ends its stream: it comes with the chunks that preceded it in the same read.
    One stream (the common case) is read directly; several are merged through a queue.
    """
    if len(streams) == 1:
        s = streams[0]
        try:
            async for batch, error in _checked(s):
                yield s.index, batch, error
        finally:
            await s.aclose()
        return

    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(s: _Stream) -> None:
        try:
            async for batch, error in _checked(s):
                await queue.put((s.index, batch, error))
        finally:
            await s.aclose()
            await queue.put((s.index, done, None))

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            index, batch, error = await queue.get()
            if batch is done:
                remaining -= 1
                continue
            yield index, batch, error
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _checked(s: _Stream) -> AsyncIterator[tuple[Batch, ApiError | None]]:
    """The stream's batches; a worker error or a broken stream ends it with an ApiError.

    A stream that ends without a finish reason gets a final ``stop`` chunk so clients always
    see how each choice ended.
    """
    finished = False
    try:
        async for batch in s.batches():
            for i, c in enumerate(batch):
                if c.error_code or c.finish_reason == "error":
                    logger.warning("worker error mid-stream: %s (%s)", c.error, c.error_code)
                    yield batch[:i], worker_error(c.error_code or ErrorCode.INTERNAL_ERROR, c.error)
                    return
                finished = finished or c.finish_reason is not None
            yield batch, None
    except (StreamBroken, ValueError) as e:
        logger.warning("worker stream broke: %s", e)
        err = ApiError(502, f"the worker stream broke: {e}", "server_error", code="worker_error")
        yield [], err
        return
    if not finished:
        yield [GenerateChunk(finish_reason="stop")], None
