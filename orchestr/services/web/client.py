"""The web UI's view of the serving side: model names from the controller, streamed replies from workers.

Every request body is a protocol model; the UI never talks to a worker without asking the
controller which one serves the model (so dispatch policy stays in one place).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx

from orchestr.protocol import (
    ChatMessage,
    GenerateRequest,
    ModelListResponse,
    WorkerAddressRequest,
    WorkerAddressResponse,
)
from orchestr.secrets import bearer, service_secret
from orchestr.services.worker_stream import WorkerClient, WorkerFailed, WorkerUnreachable

log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A failure the user should see as a message in the chat (never a stack trace)."""


class ServingClient:
    def __init__(self, controller_address: str, timeout_s: float = 100.0) -> None:
        self.controller = controller_address.rstrip("/")
        # Generous read timeout: a busy CPU worker can take a while to emit its first token.
        self.timeout = httpx.Timeout(timeout_s, connect=10.0)
        self.timeout_s = timeout_s
        self.headers = bearer(service_secret())  # the deployment's service secret, if any

    def list_models(self, refresh: bool = False) -> list[str]:
        """Model names the controller knows, sorted. ``refresh`` asks it to re-poll its workers first."""
        try:
            with httpx.Client(timeout=self.timeout, headers=self.headers) as http:
                if refresh:
                    http.post(f"{self.controller}/refresh_all_workers").raise_for_status()
                r = http.post(f"{self.controller}/list_models")
                r.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("cannot list models from %s: %s", self.controller, exc)
            return []
        return sorted(ModelListResponse.model_validate(r.json()).models)

    async def _worker_address(self, http: httpx.AsyncClient, model: str) -> str:
        try:
            r = await http.post(f"{self.controller}/get_worker_address",
                                json=WorkerAddressRequest(model=model).model_dump())
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise BackendError(f"The controller at {self.controller} is unreachable ({exc}).") from exc
        address = WorkerAddressResponse.model_validate(r.json()).address
        if not address:
            raise BackendError(f"No worker serves model '{model}' right now. Refresh the model list.")
        return address.rstrip("/")

    async def stream_chat(
        self,
        model: str,
        messages: list[ChatMessage],
        temperature: float,
        top_p: float,
        max_new_tokens: int,
    ) -> AsyncIterator[str]:
        """Yield the reply's text deltas. Raises BackendError with a user-facing message."""
        request = GenerateRequest(model=model, messages=messages, temperature=temperature,
                                  top_p=top_p, max_new_tokens=max_new_tokens)
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as http:
            address = await self._worker_address(http, model)
        workers = WorkerClient(connect_timeout=10.0, read_timeout=self.timeout_s)
        try:
            stream = await workers.open_stream(address, request)
            try:
                async for batch in stream.batches():
                    for chunk in batch:
                        if chunk.error_code:
                            raise BackendError(f"'{model}' failed: {chunk.error or 'unknown error'} "
                                               f"(code {chunk.error_code})")
                        if chunk.text:
                            yield chunk.text
            finally:
                await stream.aclose()
        except WorkerFailed as exc:
            if exc.status is not None:
                raise BackendError(f"The worker for '{model}' failed: {exc}") from exc
            raise BackendError(f"Lost the connection to the worker for '{model}' ({exc}).") from exc
        except WorkerUnreachable as exc:
            raise BackendError(f"Cannot reach the worker for '{model}' ({exc}).") from exc
        finally:
            await workers.aclose()
