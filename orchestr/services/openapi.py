"""The OpenAI API server's OpenAPI schema, from the protocol models.

Routes parse their bodies themselves (to answer OpenAI-shaped 400s and keep the hot path lean),
so FastAPI cannot see the request models: each route declares them here, and ``install`` adds
their JSON schemas to the document's components, with every error status and the SSE variant.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from orchestr.protocol import ErrorResponse

REF = "#/components/schemas/{model}"

_ERROR_TEXT = {
    400: "A client mistake: bad JSON, a value out of range, an unsupported parameter",
    401: "Missing or wrong API key",
    404: "Unknown model",
    413: "Request body too large",
    429: "A rate limit was reached (see Retry-After) or the worker is overloaded",
    502: "A worker failed",
    503: "No worker (or controller) can serve the model right now",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse, "description": _ERROR_TEXT[c]} for c in codes}


def operation(request: type[BaseModel], response: type[BaseModel] | None, stream: bool = False) -> dict[str, Any]:
    """Keyword arguments of a POST route: its request body, its answers (``response`` None: a
    JSON object of no declared shape)."""
    ok: dict[str, Any] = {"description": "The answer"}
    if response is not None:
        ok["model"] = response
    else:
        ok["content"] = {"application/json": {"schema": {"type": "object"}}}
    if stream:
        ok["description"] = "The answer; with `stream: true` Server-Sent Events of the chunk shapes"
        ok["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    body = {"required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=request.__name__)}}}}
    return {
        "response_model": None,
        "responses": {200: ok, **errors(400, 401, 404, 413, 429, 502, 503)},
        "openapi_extra": {"requestBody": body},
    }


def install(app: FastAPI, request_models: list[type[BaseModel]], bearer: bool) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        _, defs = models_json_schema([(m, "validation") for m in request_models], ref_template=REF)
        for name, schema in defs.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        # Validation errors are OpenAI-shaped 400s here, never FastAPI's 422.
        for ops in doc["paths"].values():
            for op in ops.values():
                if op.get("responses", {}).pop("422", None) is not None:
                    op["responses"].setdefault("400", {"description": _ERROR_TEXT[400], "content": {
                        "application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        if bearer:
            doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, ops in doc["paths"].items():
                if path.startswith("/v1/"):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]
