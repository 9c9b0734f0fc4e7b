"""The one client of the worker protocol: JSON calls and the newline-delimited ``GenerateChunk``
stream of ``/worker_generate_stream``.

Every reader of a worker goes through here (the API backend, the web UI, ``test-message``; the
benchmark parses lines with :func:`decode_line`), so the wire format is read in one place.
Failures are two exceptions: :class:`WorkerUnreachable` (no connection: nothing was sent) and
:class:`WorkerFailed` (an HTTP error, a broken or malformed answer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from pydantic import BaseModel

from orchestr.protocol import (
    CountTokenRequest,
    CountTokenResult,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingRequest,
    EmbeddingResult,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    ModelDetails,
    TokenizeRequest,
    TokenizeResponse,
)
from orchestr.secrets import bearer, service_secret
from orchestr.services.stream_client import StreamBroken, StreamClient, StreamConnectError, StreamResponse

M = TypeVar("M", bound=BaseModel)
Batch = list[GenerateChunk]  # the chunks one network read delivered


class WorkerUnreachable(Exception):
    """The worker did not accept the connection: nothing reached it, try another one."""


class WorkerFailed(Exception):
    """The worker answered with an HTTP error, or its answer broke off or was malformed."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Broken off or a server error: another worker may well succeed."""
        return self.status is None or self.status >= 500


def decode_line(line: str | bytes) -> GenerateChunk | None:
    """One NDJSON line of a worker stream; None for a blank line. Raises ValueError if malformed."""
    if not line.strip():
        return None
    return GenerateChunk.model_validate_json(line)


class NdjsonDecoder:
    """Splits received bytes into chunks; a line split across reads waits for its end."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> Batch:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        return [c for c in map(decode_line, lines) if c is not None]

    def close(self) -> Batch:
        last, self.pending = decode_line(self.pending), b""
        return [last] if last is not None else []


class WorkerStream:
    """An open generate stream whose first batch has already been read (to catch early errors).

    ``index`` is free for the caller (the API uses it for the choice index).
    """

    def __init__(self, first: Batch, rest: AsyncIterator[Batch], index: int = 0):
        self.first, self._rest, self.index = first, rest, index
        self.on_close: Callable[[], None] | None = None  # called once, when the stream is closed

    async def batches(self) -> AsyncIterator[Batch]:
        """The rest of the stream; raises WorkerFailed if it breaks off or is malformed."""
        if self.first:
            yield self.first
        try:
            async for b in self._rest:
                yield b
        except (StreamBroken, ValueError) as e:
            raise WorkerFailed(f"the worker stream broke: {e}") from e

    async def aclose(self) -> None:
        on_close, self.on_close = self.on_close, None
        try:
            await self._rest.aclose()  # type: ignore[attr-defined]
        finally:
            if on_close is not None:
                on_close()


class WorkerClient:
    """Pooled calls to workers over the lean HTTP/1.1 client (``stream_client``), carrying the
    service secret (by default the one ``orchestr.secrets`` finds)."""

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 600.0, secret: str | None = None):
        self.http = StreamClient(connect_timeout=connect_timeout, read_timeout=read_timeout)
        self.headers = bearer(secret if secret is not None else service_secret())

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, addr: str, path: str, body: bytes) -> StreamResponse:
        try:
            return await self.http.post(addr.rstrip("/") + path, body, headers=self.headers)
        except StreamConnectError as e:
            raise WorkerUnreachable(str(e)) from e
        except StreamBroken as e:
            raise WorkerFailed(f"worker request failed: {e!r}") from e

    @staticmethod
    def _http_error(status: int, text: str) -> WorkerFailed:
        if status == 404:
            return WorkerFailed("the worker does not implement this endpoint", status)
        return WorkerFailed(f"worker answered HTTP {status}: {text[:500]}", status)

    async def post_json(self, addr: str, path: str, body: BaseModel, timeout: float | None = None) -> dict:
        """POST a protocol model to a worker and parse its JSON answer."""

        async def call() -> tuple[int, bytes]:
            resp = await self._send(addr, path, body.model_dump_json().encode())
            try:
                return resp.status, await resp.read()
            except StreamBroken as e:
                raise WorkerFailed(f"worker request failed: {e!r}") from e

        try:
            status, data = await (asyncio.wait_for(call(), timeout) if timeout else call())
        except TimeoutError as e:
            raise WorkerFailed(f"worker request failed: no answer within {timeout:g} s") from e
        if status >= 400:
            raise self._http_error(status, data.decode(errors="replace"))
        try:
            return json.loads(data)
        except ValueError as e:
            raise WorkerFailed(f"the worker answered invalid JSON: {e}") from e

    async def _call(self, addr: str, path: str, body: BaseModel, out: type[M], timeout: float | None = None) -> M:
        data = await self.post_json(addr, path, body, timeout)
        try:
            return out.model_validate(data)
        except ValueError as e:
            raise WorkerFailed(f"the worker answered an unexpected shape: {e}") from e

    async def generate(self, addr: str, req: GenerateRequest) -> GenerateResult:
        return await self._call(addr, "/worker_generate", req, GenerateResult)

    async def embed(self, addr: str, req: EmbeddingRequest) -> EmbeddingResult:
        return await self._call(addr, "/worker_get_embeddings", req, EmbeddingResult)

    async def count_tokens(self, addr: str, req: CountTokenRequest, timeout: float = 30.0) -> CountTokenResult:
        return await self._call(addr, "/count_token", req, CountTokenResult, timeout)

    async def tokenize(self, addr: str, req: TokenizeRequest) -> TokenizeResponse:
        return await self._call(addr, "/tokenize", req, TokenizeResponse, 30.0)

    async def detokenize(self, addr: str, req: DetokenizeRequest) -> DetokenizeResponse:
        return await self._call(addr, "/detokenize", req, DetokenizeResponse, 30.0)

    async def tokenizer_info(self, addr: str, model: str) -> dict:
        return await self.post_json(addr, "/tokenizer_info", _ModelQuery(model=model), 30.0)

    async def model_details(self, addr: str, model: str, timeout: float = 10.0) -> ModelDetails:
        return await self._call(addr, "/model_details", _ModelQuery(model=model), ModelDetails, timeout)

    async def open_stream(self, addr: str, req: GenerateRequest, index: int = 0) -> WorkerStream:
        """Start a generate stream and read its first batch (so early errors surface here)."""
        resp = await self._send(addr, "/worker_generate_stream", req.model_dump_json().encode())
        if resp.status >= 400:
            try:
                text = (await resp.read()).decode(errors="replace")
            except StreamBroken:
                text = ""
            raise self._http_error(resp.status, text)

        async def batches() -> AsyncIterator[Batch]:
            # Every complete line that one read brought, parsed together: under load several
            # tokens can arrive at once and leave as one write instead of several.
            decoder = NdjsonDecoder()
            try:
                async for data in resp.iter_blocks():
                    if batch := decoder.feed(data):
                        yield batch
                if batch := decoder.close():
                    yield batch
            finally:
                await resp.aclose()

        it = batches()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            first = []
        except (StreamBroken, ValueError) as e:
            await it.aclose()
            raise WorkerFailed(f"worker stream failed: {e!r}") from e
        return WorkerStream(first, it, index)


class _ModelQuery(BaseModel):
    model: str
