"""``/v1/completions``: one worker request per prompt and choice, answered whole or as SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

from orchestr.config.serving import ApiServiceConfig
from orchestr.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    CountTokenRequest,
    GenerateChunk,
)
from orchestr.services.api_errors import ApiError, unsupported
from orchestr.services.generation import Generation, generate_request, sum_usage
from orchestr.services.logprob_shapes import completion_logprobs
from orchestr.services.param_errors import ParamError
from orchestr.services.request_caps import RequestCaps
from orchestr.services.serving_features import ChatPlan, completion_choice_logprobs, plan_completion
from orchestr.services.sse import FastSse, sse, sse_relay
from orchestr.services.worker_stream import WorkerStream

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and FastChat's) default for /v1/completions


class CompletionServing:
    def __init__(self, generation: Generation, caps: RequestCaps | None = None):
        self.generation = generation
        self.caps = caps or RequestCaps(ApiServiceConfig())

    async def create(self, req: CompletionRequest) -> CompletionResponse | AsyncIterator[str]:
        await self.generation.router.check_model(req.model)
        if req.suffix:
            raise unsupported("suffix")
        try:
            plan = plan_completion(req)
        except ParamError as e:
            raise ApiError(400, str(e), param=e.param, code=e.code) from e
        prompts = req.prompts()
        n = req.n or 1
        self.caps.check_sequences(len(prompts), n, "n" if n > 1 else "prompt")

        async def count(text: str) -> int:
            return await self.generation.count_tokens(CountTokenRequest(model=req.model, prompt=text))

        await self.caps.check_prompts(prompts, n, count)
        max_new = req.max_tokens if req.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        # the worker echoes the prompt (text of token-id prompts too), with its logprobs when asked
        fields = {**plan.generate_fields(), "echo": bool(req.echo),
                  "prompt_logprobs": bool(req.echo) and plan.logprobs is not None}
        del fields["tools"]
        # choice index = prompt * n + choice
        jobs = [
            (p * n + i, generate_request(req, i, prompt=prompt if isinstance(prompt, str) else None,
                                         max_new=max_new, prompt_token_ids=None if isinstance(prompt, str) else prompt,
                                         **fields))
            for p, prompt in enumerate(prompts)
            for i in range(n)
        ]
        if req.stream:
            streams = await self.generation.open_streams(jobs, "prompt")
            return self._stream(req, streams, plan, n)
        results = await asyncio.gather(*(self.generation.generate(g, "prompt") for _, g in jobs))
        choices = [
            CompletionResponseChoice(
                index=idx,
                text=r.text,
                logprobs=completion_choice_logprobs(r, plan),
                finish_reason=r.finish_reason or "stop",
            )
            for (idx, _), r in zip(jobs, results, strict=True)
        ]
        return CompletionResponse(model=req.model, choices=choices, usage=sum_usage([r.usage for r in results], n))

    async def _stream(self, req: CompletionRequest, streams: list[WorkerStream], plan: ChatPlan, n: int
                      ) -> AsyncIterator[str]:
        proto = CompletionStreamResponse(model=req.model, choices=[])
        fast = FastSse(proto)
        offsets = {s.index: 0 for s in streams}  # text_offset of each choice's next token

        def chunk(index: int, text: str, finish: str | None = None, logprobs: dict | None = None) -> str:
            choice = CompletionResponseChoice(index=index, text=text, finish_reason=finish, logprobs=logprobs)
            return sse(proto.model_copy(update={"choices": [choice]}).model_dump_json(exclude={"usage"}))

        def render(index: int, c: GenerateChunk) -> list[str]:
            lps = None
            if plan.logprobs is not None and c.logprobs:
                lps = completion_logprobs(c.logprobs, plan.logprobs, offsets[index])
                offsets[index] += sum(len(e.token) for e in c.logprobs)
            if c.finish_reason is not None or lps is not None:
                return [chunk(index, c.text, c.finish_reason, lps)]
            return [fast.completion(index, c.text)] if c.text else []

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        async with aclosing(sse_relay(streams, render, proto, include_usage, n)) as lines:
            async for line in lines:
                yield line
