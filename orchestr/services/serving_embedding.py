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
from orchestr.services.api_errors import ApiError, worker_error, worker_failed
from orchestr.services.routing import Router
from orchestr.services.worker_stream import WorkerClient, WorkerFailed


class EmbeddingServing:
    def __init__(self, router: Router, workers: WorkerClient):
        self.router, self.workers = router, workers

    async def create(self, req: EmbeddingsRequest) -> EmbeddingsResponse:
        inputs = [req.input] if isinstance(req.input, str) else list(req.input)
        if not inputs:
            raise ApiError(400, "input must not be empty", param="input")

        async def call(addr: str) -> EmbeddingResult:
            try:
                return await self.workers.embed(addr, EmbeddingRequest(model=req.model, input=inputs))
            except WorkerFailed as e:
                raise worker_failed(e) from e

        result = await self.router.on_worker(req.model, call)
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
