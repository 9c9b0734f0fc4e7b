"""``/tokenize``, ``/detokenize`` and ``/tokenizer_info`` in vLLM's shapes, answered by a worker of
the model (lm-evaluation-harness's remote tokenizer backend reads exactly these)."""

from __future__ import annotations

import json

from orchestr.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from orchestr.services.api_errors import ApiError, client_message
from orchestr.services.routing import Router
from orchestr.services.worker_stream import WorkerClient, WorkerFailed


class TokenizerServing:
    def __init__(self, router: Router, workers: WorkerClient):
        self.router, self.workers = router, workers

    async def _model(self, model: str | None) -> str:
        if model:
            return model
        models = (await self.router.list_models()).data
        if not models:
            raise ApiError(503, "no model is served right now", "service_unavailable", code="no_worker")
        return models[0].id

    async def _run(self, model: str, fn):
        async def call(addr: str):
            try:
                return await fn(addr)
            except WorkerFailed as e:
                if e.status == 400:  # the worker refused the input: the client's mistake
                    detail = str(e).split(": ", 1)[-1]
                    try:
                        detail = json.loads(detail)["detail"]
                    except (ValueError, KeyError, TypeError):
                        pass
                    raise ApiError(400, client_message(str(detail)), code="invalid_value") from e
                raise

        return await self.router.run(model, call)

    async def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        model = await self._model(req.model)
        update: dict = {"model": model}
        if not req.messages and req.prompt is None:  # nothing to tokenize: the empty prompt (as {"prompt": ""})
            update["prompt"] = ""
        req = req.model_copy(update=update)
        return await self._run(model, lambda addr: self.workers.tokenize(addr, req))

    async def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        model = await self._model(req.model)
        req = req.model_copy(update={"model": model})
        return await self._run(model, lambda addr: self.workers.detokenize(addr, req))

    async def tokenizer_info(self, model: str | None) -> dict:
        model = await self._model(model)
        return await self._run(model, lambda addr: self.workers.tokenizer_info(addr, model))
