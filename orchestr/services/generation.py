"""Generation for the API routes: OpenAI parameters -> a worker request, run on a routed worker.

Shared by chat and text completions: the prompt-fits-the-context check (skipped when a
byte-length bound already proves the prompt fits), one answer, or one open stream per choice.
"""

from __future__ import annotations

import asyncio
import logging

from orchestr.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    CountTokenRequest,
    GenerateRequest,
    GenerateResult,
    ModelDetails,
    UsageInfo,
)
from orchestr.services.api_errors import ApiError, worker_error, worker_failed
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
        try:
            count = (
                await self.workers.count_tokens(
                    addr, CountTokenRequest(model=g.model, prompt=g.prompt, messages=g.messages)
                )
            ).count
        except WorkerFailed as e:
            raise worker_failed(e) from e
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

    async def generate(self, g: GenerateRequest, param: str) -> GenerateResult:
        async def call(addr: str) -> GenerateResult:
            await self._check_length(addr, g, param)
            try:
                result = await self.workers.generate(addr, g)
            except WorkerFailed as e:
                raise worker_failed(e) from e
            if result.error_code:
                raise worker_error(result.error_code, result.error)
            return result

        return await self.router.on_worker(g.model, call)

    async def open_stream(self, index: int, g: GenerateRequest, param: str) -> WorkerStream:
        async def call(addr: str) -> WorkerStream:
            await self._check_length(addr, g, param)
            try:
                stream = await self.workers.open_stream(addr, g, index)
            except WorkerFailed as e:
                raise worker_failed(e) from e
            # Early errors (bad params, context overflow, overload) get a proper HTTP status
            # instead of a 200 + error event.
            if stream.first and stream.first[0].error_code:
                await stream.aclose()
                raise worker_error(stream.first[0].error_code, stream.first[0].error)
            return stream

        return await self.router.on_worker(g.model, call)

    async def open_streams(self, jobs: list[tuple[int, GenerateRequest]], param: str) -> list[WorkerStream]:
        opened = await asyncio.gather(*(self.open_stream(i, g, param) for i, g in jobs), return_exceptions=True)
        errors = [o for o in opened if isinstance(o, BaseException)]
        if errors:
            for o in opened:
                if isinstance(o, WorkerStream):
                    await o.aclose()
            raise errors[0]
        return opened  # type: ignore[return-value]


def generate_request(
    req: ChatCompletionRequest | CompletionRequest,
    choice: int,
    *,
    messages: list[ChatMessage] | None = None,
    prompt: str | None = None,
    max_new: int | None,
) -> GenerateRequest:
    """The worker request for one choice of an OpenAI request (unset parameters: the defaults)."""
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


def sum_usage(usages: list[UsageInfo | None], n: int) -> UsageInfo:
    """Completion tokens of every choice; prompt tokens once per prompt (its n choices share it)."""
    prompt = completion = 0
    for i, u in enumerate(usages):
        if u is None:
            continue
        completion += u.completion_tokens
        if i % n == 0:
            prompt += u.prompt_tokens
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
