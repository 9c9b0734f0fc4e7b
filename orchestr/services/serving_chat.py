"""``/v1/chat/completions``: one worker request per choice, answered whole or as SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

from orchestr.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    DeltaMessage,
    GenerateChunk,
)
from orchestr.services.api_errors import ApiError
from orchestr.services.generation import Generation, generate_request, sum_usage
from orchestr.services.sse import FastSse, sse, sse_relay
from orchestr.services.worker_stream import WorkerStream


class ChatServing:
    def __init__(self, generation: Generation, default_max_tokens: int = 1024):
        self.generation = generation
        self.default_max_tokens = default_max_tokens  # when a request sets none

    async def create(self, req: ChatCompletionRequest) -> ChatCompletionResponse | AsyncIterator[str]:
        for i, m in enumerate(req.messages):
            try:
                m.text()
            except ValueError as e:
                raise ApiError(400, str(e), param=f"messages.{i}.content") from e
        budget_set = bool(req.max_completion_tokens or req.max_tokens)
        max_new = req.max_completion_tokens or req.max_tokens or self.default_max_tokens
        n = req.n or 1
        jobs = [(i, generate_request(req, i, messages=req.messages, max_new=max_new)) for i in range(n)]
        if req.stream:
            streams = await self.generation.open_streams(jobs, "messages", budget_set)
            return self._stream(req, streams)
        results = await asyncio.gather(*(self.generation.generate(g, "messages", budget_set) for _, g in jobs))
        choices = [
            ChatCompletionResponseChoice(
                index=i,
                message=ChatMessage(role="assistant", content=r.text),
                finish_reason=r.finish_reason or "stop",
            )
            for i, r in enumerate(results)
        ]
        usage = sum_usage([r.usage for r in results], n)
        return ChatCompletionResponse(model=req.model, choices=choices, usage=usage)

    async def _stream(self, req: ChatCompletionRequest, streams: list[WorkerStream]) -> AsyncIterator[str]:
        proto = ChatCompletionStreamResponse(model=req.model, choices=[])
        fast = FastSse(proto)

        def chunk(index: int, delta: DeltaMessage, finish: str | None = None) -> str:
            choice = ChatCompletionStreamChoice(index=index, delta=delta, finish_reason=finish)
            return sse(proto.model_copy(update={"choices": [choice]}).model_dump_json(exclude={"usage"}))

        yield "".join(chunk(s.index, DeltaMessage(role="assistant", content="")) for s in streams)

        def render(index: int, c: GenerateChunk) -> list[str]:
            out = [fast.chat(index, c.text)] if c.text else []
            if c.finish_reason is not None:
                out.append(chunk(index, DeltaMessage(), c.finish_reason))
            return out

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        async with aclosing(sse_relay(streams, render, proto, include_usage, len(streams))) as lines:
            async for line in lines:
                yield line
