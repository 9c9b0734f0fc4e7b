"""Small helpers the HTTP services share: logging set-up, OpenAI-shaped errors, serving with uvicorn."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable
from typing import TypeVar

from fastapi.responses import JSONResponse

from orchestr.protocol import ErrorDetail, ErrorResponse

T = TypeVar("T")

LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


def setup_logging(name: str) -> logging.Logger:
    """One stream handler on the root logger (launch redirects stdout/stderr to a per-process file)."""
    level = os.environ.get("ORCHESTR_LOG_LEVEL", "INFO").upper()
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO: noise, and CPU on the API server's hot path.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    return logging.getLogger(name)


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
) -> ErrorResponse:
    return ErrorResponse(error=ErrorDetail(message=message, type=type_, param=param, code=code))


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
) -> JSONResponse:
    """A JSON response in OpenAI's error envelope."""
    return JSONResponse(error_body(message, type_, param, code).model_dump(), status_code=status)


DEFAULT_KEEP_ALIVE_S = 5.0
DEFAULT_HEADER_TIMEOUT_S = 10.0


def bounded_http_protocol(header_timeout_s: float):
    """uvicorn's httptools protocol with a header-read deadline: a connection that has not sent a
    whole request head within ``header_timeout_s`` of opening (or of its next request's first
    byte) is closed, so idle and slow-header clients cannot hold the server's connections.
    uvicorn itself times out only the idle gap after a response (``timeout_keep_alive``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            # between requests uvicorn's keep-alive timer runs; the next head starts a new deadline
            self._disarm_header_timer()
            super().on_response_complete()

    return HeaderDeadlineProtocol


def run_app(app, host: str, port: int, ssl: bool = False, log_level: str = "info",
            keep_alive_s: float = DEFAULT_KEEP_ALIVE_S, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> None:
    """Serve an ASGI app. With ``ssl`` the key/cert come from SSL_KEYFILE / SSL_CERTFILE (as FastChat).

    An idle keep-alive connection is closed after ``keep_alive_s``, one that has not sent its
    request head within ``header_timeout_s`` (slow or silent clients) too."""
    import uvicorn

    kwargs: dict = {"timeout_keep_alive": keep_alive_s}
    try:
        kwargs["http"] = bounded_http_protocol(header_timeout_s)
    except ImportError:  # no httptools (uvicorn without [standard]): h11, keep-alive timeout only
        logging.getLogger("orchestr").warning("httptools missing: no header-read timeout")
    if ssl:
        keyfile, certfile = os.environ.get("SSL_KEYFILE"), os.environ.get("SSL_CERTFILE")
        if not keyfile or not certfile:
            sys.exit("--ssl needs the SSL_KEYFILE and SSL_CERTFILE environment variables")
        kwargs.update(ssl_keyfile=keyfile, ssl_certfile=certfile)
    # access logs per request cost CPU on the hot path; keep them off unless debugging.
    uvicorn.run(app, host=host or "127.0.0.1", port=port, log_level=log_level, access_log=False, **kwargs)


# --------------------------------------------------------------------------- service plane

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


async def _send_error(send, status: int, message: str, code: str, type_: str = "invalid_request_error") -> None:
    body = error_body(message, type_, None, code).model_dump_json().encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ServiceAuth:
    """ASGI middleware: every path but ``open_paths`` needs ``Authorization: Bearer <secret>``.

    A plain ASGI wrapper (not ``BaseHTTPMiddleware``) so streamed responses pass untouched.
    """

    def __init__(self, app, secret: str | None, open_paths: tuple[str, ...] = ("/health",)):
        self.app, self.secret, self.open_paths = app, secret, open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.secret or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        from orchestr.secrets import token_matches

        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        if token_matches(header, self.secret):
            return await self.app(scope, receive, send)
        await _send_error(send, 401, "This service needs the deployment's service secret (Bearer auth).",
                          "invalid_service_secret", "authentication_error")


class BodyLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get a 413 before the app sees them."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        too_big = f"The request body is larger than this server accepts ({self.max_bytes} bytes)."
        if length is not None:
            try:
                if int(length) > self.max_bytes:
                    return await _send_error(send, 413, too_big, "request_too_large")
            except ValueError:
                return await _send_error(send, 400, "Bad Content-Length header.", "invalid_request")
            return await self.app(scope, receive, send)
        # No length given (chunked upload): read it here, bounded, then replay it.
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_bytes:
                return await _send_error(send, 413, too_big, "request_too_large")
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def protect(app, logger: logging.Logger, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
    """Wrap an internal service's app: the service secret (from env/file) and a body limit.

    Without a secret the service is open to anyone who can reach its port: said loudly.
    """
    from orchestr.secrets import service_secret

    secret = service_secret()
    if secret is None:
        logger.warning("NO SERVICE SECRET (ORCHESTR_SECRET / ORCHESTR_SECRET_FILE): this service accepts "
                       "requests from anyone who can reach its port; keep it on 127.0.0.1")
    return ServiceAuth(BodyLimit(app, max_body_bytes), secret)


class ClientGone(Exception):
    """The client disconnected before the answer was ready; its work was cancelled."""


async def cancel_on_disconnect(request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it when the client disconnects (raises ``ClientGone`` then).

    Streams stop when their reader goes; this gives a non-streaming answer the same behaviour.
    The request body must have been read already (FastAPI has, for a body parameter).
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()
