"""The web UI's view of the serving side: model names from the controller, streamed replies from workers.

Replies reach workers through the API server's own router (``orchestr.services.routing``) and
continuing streams (``orchestr.services.continuation``): one dispatch policy for both front ends,
with failover before the first token, continuation after it, balancing by requests in flight and
routing from the last-known worker table while the controller is away. Every failure becomes a
:class:`BackendError` whose message is a sentence for people; the details go to the log.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx

from orchestr.config.serving import ApiServiceConfig
from orchestr.protocol import ChatMessage, ErrorCode, GenerateChunk, GenerateRequest, ModelListResponse
from orchestr.secrets import bearer, service_secret
from orchestr.services.api_errors import ApiError
from orchestr.services.continuation import open_continuing
from orchestr.services.routing import Router
from orchestr.services.worker_stream import WorkerClient, WorkerFailed

log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A failure the user should see as a message in the chat (never a stack trace)."""


def chunk_message(model: str, chunk: GenerateChunk) -> str:
    """A worker's error chunk as a sentence for the user (its own text goes to the log)."""
    log.warning("worker error for %s: %s (code %s)", model, chunk.error, chunk.error_code)
    if chunk.error_code == ErrorCode.CONTEXT_OVERFLOW:
        return f"The conversation is too long for '{model}'. Clear the history and start a new one."
    if chunk.error_code in (ErrorCode.ENGINE_OVERLOADED, ErrorCode.RATE_LIMIT):
        return f"'{model}' is busy right now. Please try again in a moment."
    if chunk.error_code in (ErrorCode.PARAM_OUT_OF_RANGE, ErrorCode.VALIDATION_TYPE_ERROR):
        return f"'{model}' cannot answer with these parameters. Reset the parameters and try again."
    return f"'{model}' could not finish its answer. Please try again."


def routing_message(model: str, exc: ApiError) -> str:
    """A routing failure (no worker, no controller yet, every worker failed) as a sentence."""
    log.warning("cannot route a reply of %s: %s", model, exc.message)
    if exc.code == "model_not_found":
        return f"The model '{model}' is not served any more. Refresh the model list and pick another one."
    if exc.code == "no_worker":
        return f"No server is running '{model}' right now. Please try again in a minute or pick another model."
    if exc.code == "no_controller":
        return "The chat service is starting or restarting. Please try again in a moment."
    return f"'{model}' could not answer just now. Please try again in a moment."


class ServingClient:
    def __init__(self, controller_address: str, timeout_s: float = 100.0,
                 routing: ApiServiceConfig | None = None) -> None:
        self.controller = controller_address.rstrip("/")
        # Generous read timeout: a busy CPU worker can take a while to emit its first token.
        self.timeout = httpx.Timeout(timeout_s, connect=10.0)
        self.timeout_s = timeout_s
        self.headers = bearer(service_secret())  # the deployment's service secret, if any
        self.routing = routing or ApiServiceConfig()  # the API's routing settings, defaults unless given
        self._router: Router | None = None
        self._workers: WorkerClient | None = None

    def _backend(self) -> tuple[Router, WorkerClient]:
        """The router and worker client, made on first use inside the server's event loop."""
        if self._router is None or self._workers is None:
            s = self.routing
            self._router = Router(self.controller, cache_ttl=s.controller_cache_ttl_s,
                                  controller_timeout=s.controller_timeout_s, retries=s.worker_retries,
                                  health_check_interval=s.health_check_interval_s)
            self._workers = WorkerClient(connect_timeout=s.worker_connect_timeout_s, read_timeout=self.timeout_s)
        return self._router, self._workers

    async def aclose(self) -> None:
        if self._router is not None and self._workers is not None:
            await self._router.aclose()
            await self._workers.aclose()

    def list_models(self, refresh: bool = False) -> list[str]:
        """Model names the controller knows, sorted (while it does not answer: the router's
        last-known table). ``refresh`` asks it to re-poll its workers first."""
        try:
            with httpx.Client(timeout=self.timeout, headers=self.headers) as http:
                if refresh:
                    http.post(f"{self.controller}/refresh_all_workers").raise_for_status()
                r = http.post(f"{self.controller}/list_models")
                r.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("cannot list models from %s: %s", self.controller, exc)
            return self._router.known_models() if self._router is not None else []
        return sorted(ModelListResponse.model_validate(r.json()).models)

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
        router, workers = self._backend()
        try:
            stream = await open_continuing(router, workers, request)
        except ApiError as exc:
            raise BackendError(routing_message(model, exc)) from exc
        try:
            async for batch in stream.batches():
                for chunk in batch:
                    if chunk.error_code:
                        raise BackendError(chunk_message(model, chunk))
                    if chunk.text:
                        yield chunk.text
        except WorkerFailed as exc:
            log.warning("reply of %s broke off: %s", model, exc)
            raise BackendError(f"'{model}' stopped in the middle of its answer and no other server could "
                               "finish it. Please try again.") from exc
        finally:
            await stream.aclose()
