"""``/v1/chat/completions``: one worker request per choice, answered whole or as SSE.

Structured outputs, tools and logprobs are planned and shaped by ``serving_features``; a request
without them keeps the pre-rendered text fast path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing

from orchestr.config.serving import ApiServiceConfig
from orchestr.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CountTokenRequest,
    GenerateChunk,
)
from orchestr.services.api_errors import ApiError
from orchestr.services.generation import Generation, generate_request, sum_usage
from orchestr.services.param_errors import ParamError
from orchestr.services.request_caps import RequestCaps
from orchestr.services.serving_features import ChatPlan, ChatStreamShaper, chat_choice, plan_chat
from orchestr.services.sse import FastSse, sse, sse_relay
from orchestr.services.worker_stream import WorkerStream


class ChatServing:
    def __init__(self, generation: Generation, default_max_tokens: int = 1024, caps: RequestCaps | None = None):
        self.generation = generation
        self.default_max_tokens = default_max_tokens  # when a request sets none
        self.caps = caps or RequestCaps(ApiServiceConfig())

    async def create(self, req: ChatCompletionRequest) -> ChatCompletionResponse | AsyncIterator[str]:
        await self.generation.router.check_model(req.model)
        for i, m in enumerate(req.messages):
            try:
                m.text()
            except ValueError as e:
                raise ApiError(400, str(e), param=f"messages.{i}.content") from e
        n = req.n or 1
        self.caps.check_sequences(1, n, "n")
        n_bytes = sum(len(m.text().encode()) for m in req.messages) + len(json.dumps(req.tools or []))
        if self.caps.check_chat(n_bytes, len(req.messages), n) is not None:
            count = await self.generation.count_tokens(
                CountTokenRequest(model=req.model, messages=req.messages, tools=req.tools))
            self.caps.refuse_chat(count, n)
        try:
            plan = plan_chat(req)
        except ParamError as e:
            raise ApiError(400, str(e), param=e.param, code=e.code) from e
        if plan.tools and not plan.forced:
            plan.parser = await self.generation.tool_parser(req.model)
        budget_set = bool(req.max_completion_tokens or req.max_tokens)
        max_new = req.max_completion_tokens or req.max_tokens or self.default_max_tokens
        fields = plan.generate_fields()
        jobs = [(i, generate_request(req, i, messages=req.messages, max_new=max_new, **fields)) for i in range(n)]
        if req.stream:
            streams = await self.generation.open_streams(jobs, "messages", budget_set)
            return self._stream(req, streams, plan)
        results = await asyncio.gather(*(self.generation.generate(g, "messages", budget_set) for _, g in jobs))
        choices = [chat_choice(i, r, plan) for i, r in enumerate(results)]
        usage = sum_usage([r.usage for r in results], n)
        return ChatCompletionResponse(model=req.model, choices=choices, usage=usage)

    async def _stream(self, req: ChatCompletionRequest, streams: list[WorkerStream], plan: ChatPlan
                      ) -> AsyncIterator[str]:
        proto = ChatCompletionStreamResponse(model=req.model, choices=[])
        fast = FastSse(proto)
        head = proto.model_dump(exclude={"choices", "usage"})

        def chunk(index: int, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> str:
            # the delta carries only what it has: the last one is {} as OpenAI sends it
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return sse(json.dumps({**head, "choices": [choice]}, ensure_ascii=False))

        yield "".join(chunk(s.index, {"role": "assistant", "content": ""}) for s in streams)
        shapers = {s.index: ChatStreamShaper(plan) for s in streams}

        def render(index: int, c: GenerateChunk) -> list[str]:
            if not plan.plain:
                return [chunk(index, delta, finish, lps) for delta, lps, finish in shapers[index].feed(c)]
            out = [fast.chat(index, c.text)] if c.text else []
            if c.finish_reason is not None:
                out.append(chunk(index, {}, c.finish_reason))
            return out

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        async with aclosing(sse_relay(streams, render, proto, include_usage, len(streams))) as lines:
            async for line in lines:
                yield line
