"""Small helpers the HTTP services share: logging set-up, OpenAI-shaped errors, serving with uvicorn."""

from __future__ import annotations

import logging
import os
import sys

from fastapi.responses import JSONResponse

from orchestr.protocol import ErrorDetail, ErrorResponse

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


def run_app(app, host: str, port: int, ssl: bool = False, log_level: str = "info") -> None:
    """Serve a FastAPI app. With ``ssl`` the key/cert come from SSL_KEYFILE / SSL_CERTFILE (as FastChat)."""
    import uvicorn

    kwargs: dict = {}
    if ssl:
        keyfile, certfile = os.environ.get("SSL_KEYFILE"), os.environ.get("SSL_CERTFILE")
        if not keyfile or not certfile:
            sys.exit("--ssl needs the SSL_KEYFILE and SSL_CERTFILE environment variables")
        kwargs.update(ssl_keyfile=keyfile, ssl_certfile=certfile)
    # access logs per request cost CPU on the hot path; keep them off unless debugging.
    uvicorn.run(app, host=host or "127.0.0.1", port=port, log_level=log_level, access_log=False, **kwargs)
