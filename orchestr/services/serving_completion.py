"""``/v1/completions``: one worker request per prompt and choice, answered whole or as SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

from orchestr.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    GenerateChunk,
)
from orchestr.services.api_errors import unsupported
from orchestr.services.generation import Generation, generate_request, sum_usage
from orchestr.services.sse import FastSse, sse, sse_relay
from orchestr.services.worker_stream import WorkerStream

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and FastChat's) default for /v1/completions


class CompletionServing:
    def __init__(self, generation: Generation):
        self.generation = generation

    async def create(self, req: CompletionRequest) -> CompletionResponse | AsyncIterator[str]:
        if req.suffix:
            raise unsupported("suffix")
        if req.logprobs is not None:
            raise unsupported("logprobs")
        if req.best_of is not None and req.best_of != (req.n or 1):
            raise unsupported("best_of")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        n = req.n or 1
        max_new = req.max_tokens if req.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        # choice index = prompt * n + choice
        jobs = [
            (p * n + i, generate_request(req, i, prompt=prompt, max_new=max_new))
            for p, prompt in enumerate(prompts)
            for i in range(n)
        ]
        if req.stream:
            streams = await self.generation.open_streams(jobs, "prompt")
            return self._stream(req, streams, prompts, n)
        results = await asyncio.gather(*(self.generation.generate(g, "prompt") for _, g in jobs))
        choices = [
            CompletionResponseChoice(
                index=idx,
                text=(prompts[idx // n] if req.echo else "") + r.text,
                finish_reason=r.finish_reason or "stop",
            )
            for (idx, _), r in zip(jobs, results, strict=True)
        ]
        return CompletionResponse(model=req.model, choices=choices, usage=sum_usage([r.usage for r in results], n))

    async def _stream(
        self, req: CompletionRequest, streams: list[WorkerStream], prompts: list[str], n: int
    ) -> AsyncIterator[str]:
        proto = CompletionStreamResponse(model=req.model, choices=[])
        fast = FastSse(proto)

        def chunk(index: int, text: str, finish: str | None = None) -> str:
            choice = CompletionResponseChoice(index=index, text=text, finish_reason=finish)
            return sse(proto.model_copy(update={"choices": [choice]}).model_dump_json(exclude={"usage"}))

        if req.echo:
            yield "".join(chunk(s.index, prompts[s.index // n]) for s in streams)

        def render(index: int, c: GenerateChunk) -> list[str]:
            if c.finish_reason is not None:
                return [chunk(index, c.text, c.finish_reason)]
            return [fast.completion(index, c.text)] if c.text else []

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        async with aclosing(sse_relay(streams, render, proto, include_usage, n)) as lines:
            async for line in lines:
                yield line
