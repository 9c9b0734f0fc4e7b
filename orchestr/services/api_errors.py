"""Errors the OpenAI API server's clients see, and how worker failures map onto them.

Everything the API backend raises for a client is an ``ApiError``: OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.
"""

from __future__ import annotations

import re

from orchestr.protocol import ErrorCode
from orchestr.services.http_util import error_body
from orchestr.services.worker_stream import WorkerFailed


class ApiError(Exception):
    """An error the client sees as ``{"error": {...}}`` with this HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers  # e.g. Retry-After of a 429

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code).model_dump()


# what a library's message may carry that is none of a client's business: a log prefix with a
# source location ("[01:43:34] /project/cpp/json_schema_converter.cc:5082: "), other source paths,
# and exception class names ("ConnectError('...')", "RuntimeError: ...")
_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\]\s*")
_SOURCE = re.compile(r"(?:[\w.~-]*/)+[\w.-]+\.(?:cc|cpp|cxx|c|h|hpp|py|pyx|rs|cu)(?::\d+)*:?\s*")
_EXC_REPR = re.compile(r"\b[A-Z]\w*(?:Error|Exception|Timeout|Exit|Interrupt)\((['\"]?)(.*?)\1\)")
_EXC_PREFIX = re.compile(r"\b[A-Z]\w*(?:Error|Exception|Timeout|Exit|Interrupt):\s*")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*", re.S)


def client_message(text: str) -> str:
    """``text`` as a client may see it: no source paths, log prefixes or exception class names."""
    out = _TRACEBACK.sub("", text)
    out = _LOG_PREFIX.sub("", out)
    out = _SOURCE.sub("", out)
    out = _EXC_REPR.sub(lambda m: m.group(2), out)
    out = _EXC_PREFIX.sub("", out)
    return " ".join(out.split()) or "the model worker reported an error"


def worker_error(code: int, message: str | None) -> ApiError:
    """Map a worker's numeric error code to the HTTP error a client should get."""
    message = client_message(message or "the model worker reported an error")
    if code == ErrorCode.CONTEXT_OVERFLOW:
        return ApiError(400, message, param="messages", code="context_length_exceeded")
    if code in (ErrorCode.PARAM_OUT_OF_RANGE, ErrorCode.VALIDATION_TYPE_ERROR):
        return ApiError(400, message, code="invalid_value")
    if code == ErrorCode.INVALID_MODEL:
        return ApiError(404, message, param="model", code="model_not_found")
    if code in (ErrorCode.ENGINE_OVERLOADED, ErrorCode.RATE_LIMIT):
        return ApiError(429, message, type_="rate_limit_error", code="engine_overloaded")
    return ApiError(500, message, type_="server_error", code=code or "internal_error")


def worker_failed(e: WorkerFailed) -> ApiError:
    """A broken, malformed or HTTP-error answer of a worker: the client sees a 502, unless the
    worker refused the request's values (400/422: the client's mistake, a 400)."""
    if e.status in (400, 422):
        return ApiError(400, f"The model worker refused the request: {client_message(str(e))}", code="invalid_value")
    return ApiError(502, client_message(str(e)), "server_error", code="worker_error")


def unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def unsupported(param: str) -> ApiError:
    return ApiError(400, f"Unsupported parameter: '{param}' is not supported by this server.", param=param,
                    code="unsupported_parameter")
