"""Generation for the API routes: OpenAI parameters -> a worker request, run on a routed worker.

Shared by chat and text completions: the prompt-fits-the-context check (skipped when a
byte-length bound already proves the prompt fits), one answer, or one open stream per choice.
"""

from __future__ import annotations

import asyncio
import json
import logging

from orchestr.protocol import (
    SEED_LIMIT,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    CountTokenRequest,
    ErrorCode,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    ModelDetails,
    PromptTokensDetails,
    UsageInfo,
)
from orchestr.services.api_errors import ApiError, worker_error, worker_failed
from orchestr.services.continuation import open_continuing
from orchestr.services.routing import Router
from orchestr.services.worker_stream import WorkerClient, WorkerFailed, WorkerStream

logger = logging.getLogger("orchestr.api")

# Upper bound of the tokens a chat template adds (system prompt, role markers): used only to
# decide whether the exact /count_token call can be skipped.
TEMPLATE_OVERHEAD_TOKENS = 256
PER_MESSAGE_OVERHEAD_TOKENS = 16


class Generation:
    def __init__(self, router: Router, workers: WorkerClient):
        self.router, self.workers = router, workers
        self._details: dict[tuple[str, str], ModelDetails | None] = {}

    async def _model_details(self, addr: str, model: str) -> ModelDetails | None:
        key = (addr, model)
        if key not in self._details:
            try:
                self._details[key] = await self.workers.model_details(addr, model)
            except WorkerFailed as e:
                logger.warning("no model details from %s: %s", addr, e)
                self._details[key] = None
        return self._details[key]

    async def _check_length(self, addr: str, g: GenerateRequest, param: str, budget_set: bool) -> None:
        """400 context_length_exceeded when prompt + max_new_tokens cannot fit the model's context.

        ``param`` names the prompt's parameter; a max_new_tokens the client did not set
        (``budget_set`` false: the server's default) only needs room for one token (the worker caps it).
        """
        details = await self._model_details(addr, g.model)
        if details is None or not details.context_length:
            return
        ctx = details.context_length
        budget = (g.max_new_tokens or 0) if budget_set else 1
        if g.prompt_token_ids is not None:
            bound = len(g.prompt_token_ids)  # exact
        elif g.messages is not None:
            n_bytes = sum(len(m.text().encode()) for m in g.messages) + len(json.dumps(g.tools or []))
            bound = n_bytes + TEMPLATE_OVERHEAD_TOKENS + PER_MESSAGE_OVERHEAD_TOKENS * len(g.messages)
        else:
            bound = len((g.prompt or "").encode()) + 8
        if bound + budget < ctx or g.prompt_token_ids is not None and bound + budget <= ctx:
            return  # byte-level tokenizers give at most one token per byte
        if g.prompt_token_ids is not None:
            count = bound
        else:
            count = (await self.workers.count_tokens(
                addr, CountTokenRequest(model=g.model, prompt=g.prompt, messages=g.messages, tools=g.tools))).count
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

    async def generate(self, g: GenerateRequest, param: str, budget_set: bool = True) -> GenerateResult:
        """The whole answer, read from the worker's stream (a client that leaves cancels it
        there); a worker that dies on the way is replaced as for a stream (``continuation``)."""
        stream = await self.open_stream(0, g, param, budget_set)
        chunks: list[GenerateChunk] = []
        try:
            async for batch in stream.batches():
                for c in batch:
                    if c.error_code or c.finish_reason == "error":
                        raise worker_error(c.error_code or ErrorCode.INTERNAL_ERROR, c.error)
                    chunks.append(c)
        except WorkerFailed as e:
            raise worker_failed(e) from e
        finally:
            await stream.aclose()
        result = GenerateResult.from_chunks(chunks)
        result.finish_reason = result.finish_reason or "stop"
        return result

    async def count_tokens(self, req: CountTokenRequest) -> int:
        """The exact prompt tokens of ``req`` (a text, or messages through the chat template), by a worker."""

        async def call(addr: str) -> int:
            return (await self.workers.count_tokens(addr, req)).count

        return await self.router.run(req.model, call)

    async def tool_parser(self, model: str) -> str | None:
        """The tool-call syntax of the model's chat template, from a worker's model details."""

        async def call(addr: str) -> ModelDetails | None:
            return await self._model_details(addr, model)

        details = await self.router.run(model, call)
        return details.tool_parser if details is not None else None

    async def open_stream(self, index: int, g: GenerateRequest, param: str, budget_set: bool = True) -> WorkerStream:
        """A stream whose first batch arrived; failures before it are retried on another worker,
        after it continued on another worker."""

        async def before(addr: str) -> None:
            await self._check_length(addr, g, param, budget_set)

        async def check(addr: str, stream: WorkerStream) -> None:
            # Early errors (bad params, context overflow, overload) get a proper HTTP status
            # instead of a 200 + error event.
            if stream.first and stream.first[0].error_code:
                raise worker_error(stream.first[0].error_code, stream.first[0].error)

        return await open_continuing(self.router, self.workers, g, index, check, before)

    async def open_streams(
        self, jobs: list[tuple[int, GenerateRequest]], param: str, budget_set: bool = True
    ) -> list[WorkerStream]:
        """All choices' streams, or none: a failure (or a client that left) closes those opened."""
        tasks = [asyncio.ensure_future(self.open_stream(i, g, param, budget_set)) for i, g in jobs]
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks)
            raise
        finally:
            failed = [t for t in tasks if t.cancelled() or t.exception() is not None]
            if failed:
                for t in tasks:
                    if t not in failed:
                        await t.result().aclose()
        for t in failed:
            if not t.cancelled():
                raise t.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]


def generate_request(
    req: ChatCompletionRequest | CompletionRequest,
    choice: int,
    *,
    messages: list[ChatMessage] | None = None,
    prompt: str | None = None,
    max_new: int | None,
    **fields,
) -> GenerateRequest:
    """The worker request for one choice of an OpenAI request (unset parameters: the defaults)."""
    defaults = GenerateRequest.model_fields

    def pick(name: str):
        value = getattr(req, name)
        return defaults[name].default if value is None else value

    # n choices of one request must differ: vary the seed per choice when one is given.
    seed = None if req.seed is None else (req.seed + choice) % SEED_LIMIT
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
        **fields,
    )


def sum_usage(usages: list[UsageInfo | None], n: int) -> UsageInfo:
    """Completion tokens of every choice; prompt tokens (and the cached ones among them) once
    per prompt (its n choices share it)."""
    prompt = completion = cached = 0
    details = False
    for i, u in enumerate(usages):
        if u is None:
            continue
        completion += u.completion_tokens
        if i % n == 0:
            prompt += u.prompt_tokens
            if u.prompt_tokens_details is not None:
                details = True
                cached += u.prompt_tokens_details.cached_tokens
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=cached) if details else None)
