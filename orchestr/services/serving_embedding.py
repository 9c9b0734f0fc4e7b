"""``/v1/embeddings``: all inputs in one worker call, vectors as floats or base64."""

from __future__ import annotations

import base64
from array import array

from orchestr.protocol import (
    CountTokenRequest,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResult,
    EmbeddingsRequest,
    EmbeddingsResponse,
    UsageInfo,
)
from orchestr.services.api_errors import ApiError, worker_error
from orchestr.services.generation import Generation
from orchestr.services.request_caps import RequestCaps


class EmbeddingServing:
    def __init__(self, generation: Generation, caps: RequestCaps):
        self.generation, self.caps = generation, caps
        self.router, self.workers = generation.router, generation.workers

    async def create(self, req: EmbeddingsRequest) -> EmbeddingsResponse:
        await self.router.check_model(req.model)
        inputs = [req.input] if isinstance(req.input, str) else list(req.input)
        if not inputs:
            raise ApiError(400, "input must not be empty", param="input")
        if all(isinstance(x, int) for x in inputs):  # one token-id input
            inputs = [inputs]
        token_ids = [x for x in inputs if isinstance(x, list)]
        if token_ids and len(token_ids) != len(inputs):
            raise ApiError(400, "input mixes texts and token ids", param="input")

        if any(not text for text in inputs):
            raise ApiError(400, "input must not contain empty strings or token lists", param="input")

        async def count(text: str) -> int:
            return await self.generation.count_tokens(CountTokenRequest(model=req.model, prompt=text))

        await self.caps.check_embeddings(inputs, count)
        body = EmbeddingRequest(model=req.model, input_ids=inputs) if token_ids else \
            EmbeddingRequest(model=req.model, input=inputs)

        async def call(addr: str) -> EmbeddingResult:
            return await self.workers.embed(addr, body)

        result = await self.router.run(req.model, call)
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
