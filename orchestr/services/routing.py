"""Which worker serves a request: the controller's worker table, live-load dispatch, failover.

One router for both front ends: the OpenAI API server and the web UI route every request here
(streams that break off after their first token continue through ``continuation``); the
controller's ``/get_worker_address`` remains for FastChat's clients only.

* The table comes from the controller and is reused for a short TTL; when it is stale the
  request goes on with it while one background call refreshes it, and while the controller is
  unreachable the last-known table keeps serving (a controller restart costs nothing). A worker
  a restarted controller does not list yet stays routable for ``TABLE_GRACE_S``.
* Dispatch is least-loaded by live load: the requests this API server has in flight on each
  worker (ties at random), not heartbeat-era estimates.
* A request that fails before anything reached its client (connection refused or reset, EOF
  before the first chunk, a worker 5xx) is retried on another worker of the model. The failing
  worker leaves the rotation at once, the controller is told, and it comes back when its
  ``/health`` answers again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from orchestr.protocol import ControllerStatus, ModelCard, ModelList, WorkerFailureReport
from orchestr.secrets import bearer, service_secret
from orchestr.services.api_errors import ApiError, unknown_model, worker_failed
from orchestr.services.worker_stream import WorkerFailed, WorkerUnreachable

logger = logging.getLogger("orchestr.api")

T = TypeVar("T")

TABLE_GRACE_S = 15.0  # a worker missing from a fresh table stays routable this long (re-registering)


class Router:
    def __init__(
        self,
        controller_address: str,
        *,
        cache_ttl: float,
        controller_timeout: float,
        retries: int,
        health_check_interval: float,
    ):
        # no defaults here: ApiBackend passes services.api's (ApiServiceConfig is their one source)
        self.controller = controller_address.rstrip("/")
        self.cache_ttl = cache_ttl
        self.retries = max(0, retries)
        self.health_check_interval = health_check_interval
        headers = bearer(service_secret())
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(controller_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            headers=headers,
        )
        self._table: dict[str, list[str]] = {}  # worker -> models, as the controller last listed
        self._missing_since: dict[str, float] = {}  # worker absent from the latest table since
        self._fetched_at: float | None = None
        self._refresh: asyncio.Future | None = None
        self._controller_lost = False  # said once per outage
        self._seen_models: set[str] = set()  # every model ever registered: 503 (down), not 404
        self.in_flight: dict[str, int] = {}  # live load: requests of this server per worker
        self._down: dict[str, asyncio.Task] = {}  # out of rotation -> its health-check loop
        self._tasks: set[asyncio.Task] = set()

    async def aclose(self) -> None:
        for t in [*self._down.values(), *self._tasks]:
            t.cancel()
        await asyncio.gather(*self._down.values(), *self._tasks, return_exceptions=True)
        await self.http.aclose()

    # ------------------------------------------------------------------ controller

    async def _post_controller(self, path: str, body: dict | None = None) -> dict:
        try:
            r = await self.http.post(self.controller + path, json=body or {})
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, ValueError) as e:
            logger.info("controller %s: %s", self.controller, e)
            raise ApiError(
                503, "The controller is unreachable and no worker table is known yet; please try again.",
                "service_unavailable", code="no_controller",
            ) from e  # fmt: skip

    async def _fetch_table(self) -> None:
        status = ControllerStatus.model_validate(await self._post_controller("/worker_get_status"))
        now = time.monotonic()
        listed = {w.worker_name: list(w.model_names) for w in status.workers}
        for name in self._table:
            if name not in listed:
                self._missing_since.setdefault(name, now)
        for name in listed:
            self._missing_since.pop(name, None)
        self._table.update(listed)
        for name, since in list(self._missing_since.items()):
            if now - since > TABLE_GRACE_S:
                del self._missing_since[name]
                self._table.pop(name, None)
        self._fetched_at = now
        self._seen_models.update(status.model_names)

    def _start_refresh(self) -> asyncio.Future:
        # Single flight: concurrent requests that find the table stale share one controller call.
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(self._fetch_table())
            self._refresh.add_done_callback(self._refresh_done)
        return self._refresh

    def _refresh_done(self, task: asyncio.Future) -> None:
        self._refresh = None
        failed = task.cancelled() or task.exception() is not None
        if failed and not self._controller_lost and self._fetched_at is not None:
            logger.warning("controller unreachable; routing from the last-known worker table")
        elif not failed and self._controller_lost:
            logger.info("controller answers again")
        self._controller_lost = failed

    async def _ensure_table(self, force: bool = False) -> None:
        fresh = self._fetched_at is not None and time.monotonic() - self._fetched_at <= self.cache_ttl
        if fresh and not force:
            return
        refresh = self._start_refresh()
        if self._fetched_at is None or force:
            try:
                await asyncio.shield(refresh)
            except ApiError:
                if self._fetched_at is None:
                    raise  # no table at all yet: the controller's absence is the answer
        # else: stale but usable; the refresh runs in the background

    # ------------------------------------------------------------------ models

    async def list_models(self) -> ModelList:
        await self._ensure_table(force=True)
        models = sorted({m for name, ms in self._table.items() if name not in self._missing_since for m in ms})
        return ModelList(data=[ModelCard(id=m, root=m) for m in models])

    def known_models(self) -> list[str]:
        """The models of the last-known table (no controller call): while the controller is away."""
        return sorted({m for name, ms in self._table.items() if name not in self._missing_since for m in ms})

    async def retrieve_model(self, model: str) -> ModelCard:
        for card in (await self.list_models()).data:
            if card.id == model:
                return card
        raise unknown_model(model)

    def _known(self, model: str) -> bool:
        return model in self._seen_models or any(model in ms for ms in self._table.values())

    async def check_model(self, model: str) -> None:
        """404 for a model no worker serves or served, before any other check of a request."""
        await self._ensure_table()
        if not self._known(model):
            await self._ensure_table(force=True)  # maybe it registered since we last looked
            if not self._known(model):
                raise unknown_model(model)

    # ------------------------------------------------------------------ dispatch

    def _candidates(self, model: str, exclude: set[str]) -> list[str]:
        return [n for n, ms in self._table.items() if model in ms and n not in exclude and n not in self._down]

    async def worker_for(self, model: str, exclude: set[str] = frozenset()) -> str:  # type: ignore[assignment]
        await self._ensure_table()
        names = self._candidates(model, exclude)
        if not names and not exclude:  # maybe it registered since we last looked
            await self._ensure_table(force=True)
            names = self._candidates(model, exclude)
        if not names:
            if model in self._seen_models or any(model in ms for ms in self._table.values()):
                raise ApiError(
                    503, f"No worker is serving model `{model}` right now; try again later.",
                    "service_unavailable", param="model", code="no_worker",
                )  # fmt: skip
            raise unknown_model(model)
        least = min(self.in_flight.get(n, 0) for n in names)
        return random.choice([n for n in names if self.in_flight.get(n, 0) == least])

    def release(self, addr: str) -> None:
        self.in_flight[addr] -= 1

    async def run(self, model: str, call: Callable[[str], Awaitable[T]], *, hold: bool = False) -> T:
        """``call(worker_address)``, retried on another worker when it fails before answering.

        The request counts as load on its worker until ``call`` returns, or with ``hold`` until
        the caller calls ``release(address)`` (a stream, when it closes).
        """
        tried: set[str] = set()
        failure: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                addr = await self.worker_for(model, tried)
            except ApiError:
                if failure is None:
                    raise
                break
            self.in_flight[addr] = self.in_flight.get(addr, 0) + 1
            held = False
            try:
                result = await call(addr)
                held = hold
                return result
            except WorkerUnreachable as e:
                failure = e
            except WorkerFailed as e:
                if not e.retryable:
                    raise worker_failed(e) from e
                failure = e
            finally:
                if not held:
                    self.release(addr)
            logger.warning("worker %s failed before answering (%s); trying another", addr, failure)
            tried.add(addr)
            self.take_out(addr)
        # what failed (addresses, exceptions) is in the log above; the client gets a sentence
        if isinstance(failure, WorkerFailed):
            raise ApiError(
                502, f"The workers serving `{model}` failed to answer; please try again.", "server_error",
                code="worker_error",
            )  # fmt: skip
        raise ApiError(
            503, f"The worker serving `{model}` is unreachable; please try again.", "service_unavailable",
            code="worker_unreachable",
        )  # fmt: skip

    # ------------------------------------------------------------------ health

    def take_out(self, addr: str) -> None:
        """Out of rotation now; the controller is told; back when its health check answers."""
        if addr in self._down:
            return
        self._down[addr] = asyncio.ensure_future(self._health_loop(addr))
        task = asyncio.ensure_future(self._report(addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, addr: str) -> None:
        try:
            await self._post_controller("/report_worker_failure", WorkerFailureReport(worker_name=addr).model_dump())
        except ApiError as e:
            logger.info("could not tell the controller about %s: %s", addr, e.message)

    async def _health_loop(self, addr: str) -> None:
        try:
            while addr in self._table:
                await asyncio.sleep(self.health_check_interval)
                try:
                    r = await self.http.get(addr.rstrip("/") + "/health", timeout=2.0)
                    if r.status_code == 200:
                        logger.info("worker %s answers again: back in rotation", addr)
                        return
                except httpx.HTTPError:
                    pass
        finally:
            self._down.pop(addr, None)
