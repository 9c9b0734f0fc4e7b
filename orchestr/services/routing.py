"""Which worker serves a request: the controller's worker table (cached), dispatch, failover.

The table is cached for a short TTL and a model with a single worker is dispatched without
asking the controller. A worker that refuses a connection is skipped for a while and the
request is retried once on another worker of the model.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from orchestr.protocol import (
    ControllerStatus,
    ModelCard,
    ModelList,
    ModelListResponse,
    WorkerAddressResponse,
)
from orchestr.services.api_errors import ApiError, unknown_model
from orchestr.services.worker_stream import WorkerUnreachable

logger = logging.getLogger("orchestr.api")

T = TypeVar("T")

UNREACHABLE_SKIP_S = 10.0  # how long a worker that refused a connection is not dispatched to


class Router:
    def __init__(self, controller_address: str, controller_cache_ttl: float = 2.0, timeout: float = 600.0):
        self.controller = controller_address.rstrip("/")
        self.cache_ttl = controller_cache_ttl
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=timeout, write=60.0, pool=timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        self._status: ControllerStatus | None = None
        self._status_at = 0.0
        self._refresh: asyncio.Future | None = None
        self._unreachable: dict[str, float] = {}  # worker -> until when it is skipped
        self._seen_models: set[str] = set()  # every model ever registered: 503 (down), not 404

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------ controller

    async def _post_controller(self, path: str, body: dict | None = None) -> dict:
        try:
            r = await self.http.post(self.controller + path, json=body or {}, timeout=10.0)
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise ApiError(
                503,
                f"controller {self.controller} is unreachable: {e}",
                "service_unavailable",
                code="no_controller",
            ) from e

    async def _workers_table(self, force: bool = False) -> ControllerStatus:
        if not force and self._status is not None and time.monotonic() - self._status_at <= self.cache_ttl:
            return self._status
        # Single flight: concurrent requests that find the table stale share one controller call.
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(self._fetch_table())
            self._refresh.add_done_callback(self._refresh_done)
        return await asyncio.shield(self._refresh)

    async def _fetch_table(self) -> ControllerStatus:
        status = ControllerStatus.model_validate(await self._post_controller("/worker_get_status"))
        self._status, self._status_at = status, time.monotonic()
        self._seen_models.update(status.model_names)
        return status

    def _refresh_done(self, task: asyncio.Future) -> None:
        self._refresh = None
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not reported as lost

    def _invalidate(self) -> None:
        self._status_at = 0.0

    # ------------------------------------------------------------------ models

    async def list_models(self) -> ModelList:
        models = ModelListResponse.model_validate(await self._post_controller("/list_models")).models
        self._seen_models.update(models)
        return ModelList(data=[ModelCard(id=m, root=m) for m in models])

    async def retrieve_model(self, model: str) -> ModelCard:
        for card in (await self.list_models()).data:
            if card.id == model:
                return card
        raise unknown_model(model)

    # ------------------------------------------------------------------ dispatch

    async def worker_for(self, model: str, exclude: set[str] = frozenset()) -> str:  # type: ignore[assignment]
        table = await self._workers_table()
        names = [w.worker_name for w in table.workers if model in w.model_names]
        if not names:  # maybe it registered since we last looked
            table = await self._workers_table(force=True)
            names = [w.worker_name for w in table.workers if model in w.model_names]
        now = time.monotonic()
        names = [n for n in names if n not in exclude and self._unreachable.get(n, 0.0) < now]
        if not names:
            if model in self._seen_models:
                raise ApiError(
                    503,
                    f"No worker is serving model `{model}` right now; try again later.",
                    "service_unavailable",
                    param="model",
                    code="no_worker",
                )
            raise unknown_model(model)
        if len(names) == 1:
            return names[0]
        # Several workers: the controller's dispatch method decides (it tracks queue lengths).
        addr = WorkerAddressResponse.model_validate(
            await self._post_controller("/get_worker_address", {"model": model})
        ).address
        return addr if addr in names else random.choice(names)

    async def on_worker(self, model: str, call: Callable[[str], Awaitable[T]]) -> T:
        """Run ``call(worker_address)``; if the worker is gone, retry once on another worker."""
        tried: set[str] = set()
        for _ in range(2):
            addr = await self.worker_for(model, tried)
            try:
                return await call(addr)
            except WorkerUnreachable:
                logger.warning("worker %s for %s is unreachable", addr, model)
                tried.add(addr)
                # Skip it for a while: the controller lists it until its heartbeats expire.
                self._unreachable[addr] = time.monotonic() + UNREACHABLE_SKIP_S
                self._invalidate()
        raise ApiError(
            503,
            f"The worker serving `{model}` is unreachable.",
            "service_unavailable",
            code="worker_unreachable",
        )
