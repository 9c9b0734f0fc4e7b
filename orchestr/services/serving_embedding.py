"""``/v1/embeddings``: all inputs in one worker call, vectors as floats or base64."""

from __future__ import annotations

import base64
from array import array

from orchestr.protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResult,
    EmbeddingsRequest,
    EmbeddingsResponse,
    UsageInfo,
)
from orchestr.services.api_errors import ApiError, worker_error
from orchestr.services.routing import Router
from orchestr.services.worker_stream import WorkerClient


class EmbeddingServing:
    def __init__(self, router: Router, workers: WorkerClient, max_inputs: int = 256):
        self.router, self.workers, self.max_inputs = router, workers, max_inputs

    async def create(self, req: EmbeddingsRequest) -> EmbeddingsResponse:
        if req.dimensions is not None:
            raise ApiError(400, "dimensions is not supported: this model's embeddings have one fixed size",
                           param="dimensions", code="unsupported_parameter")
        inputs = [req.input] if isinstance(req.input, str) else list(req.input)
        if not inputs:
            raise ApiError(400, "input must not be empty", param="input")
        if all(isinstance(x, int) for x in inputs):  # one token-id input
            inputs = [inputs]
        token_ids = [x for x in inputs if isinstance(x, list)]
        if token_ids and len(token_ids) != len(inputs):
            raise ApiError(400, "input mixes texts and token ids", param="input")

        if len(inputs) > self.max_inputs:
            raise ApiError(400, f"input holds {len(inputs)} items; this server embeds at most "
                                f"{self.max_inputs} per request", param="input", code="too_many_inputs")
        if any(not text for text in inputs):
            raise ApiError(400, "input must not contain empty strings or token lists", param="input")
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
