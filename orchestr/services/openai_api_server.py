"""OpenAI-compatible REST API in front of the controller and its workers.

Routes authenticate, parse and validate; ``ApiBackend`` does the work. Every error a client can
see has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; parameter errors are
400 (as OpenAI answers), not FastAPI's default 422.

Run: ``python -m orchestr.services.openai_api_server --port 8000 --controller-address http://localhost:21001``.
"""

from __future__ import annotations

import argparse
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestr import __version__, secrets
from orchestr.config.flags import add_flags, from_args
from orchestr.config.serving import ApiServiceConfig
from orchestr.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelCard,
    ModelList,
    ResponsesRequest,
    TokenizeRequest,
    TokenizeResponse,
)
from orchestr.services import openapi
from orchestr.services.api_backend import ApiBackend
from orchestr.services.api_errors import ApiError, unsupported
from orchestr.services.http_util import (
    BodyLimit,
    ClientGone,
    cancel_on_disconnect,
    error_response,
    run_app,
    setup_logging,
)
from orchestr.services.metrics import mount_metrics, set_model

logger = setup_logging("orchestr.api")

M = TypeVar("M", bound=BaseModel)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def validation_error(errors: list) -> ApiError:
    """The first pydantic error as OpenAI would word it, naming the parameter."""
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":
        return ApiError(
            400,
            "We could not parse the JSON body of your request: " + str(err.get("msg", "")),
            code="invalid_json",
        )
    if not loc and err.get("type") == "model_type":
        return ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    if err.get("type") == "extra_forbidden" and len(loc) == 1:
        return unsupported(loc[0])
    if err.get("type") == "missing":
        return ApiError(
            400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ApiError(
        400, f"Invalid value for '{param}': {shown}. {err.get('msg', '')}", param=param, code="invalid_value"
    )


async def parse_body(request: Request, model: type[M]) -> M:
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "The request body is empty; a JSON object is required.", code="invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None


async def parse_model_request(request: Request, shape: type[M]) -> M:
    """``parse_body`` for a request that names a model, recorded for the request metrics."""
    req = await parse_body(request, shape)
    set_model(request, req.model)
    return req


def make_auth(api_keys: list[str]):
    keys = frozenset(api_keys)

    async def check_api_key(request: Request) -> None:
        if not keys:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth:
            raise ApiError(
                401,
                "You didn't provide an API key. Provide it in the Authorization header (Bearer auth).",
                code="invalid_api_key",
            )
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip(), k) for k in keys):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    return check_api_key


async def answer(request: Request, work: Awaitable[BaseModel | AsyncIterator[str]]) -> Response:
    """Run a route's work; a non-streaming answer is cancelled when its client leaves."""
    try:
        result = await cancel_on_disconnect(request, work)
    except ClientGone:
        return Response(status_code=499)
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), media_type="application/json")
    return StreamingResponse(result, media_type="text/event-stream", headers=STREAM_HEADERS)


def create_app(backend: ApiBackend, api_keys: list[str] | None = None,
               settings: ApiServiceConfig | None = None) -> FastAPI:
    """The API app over ``backend``; ``settings`` (services.api) gives the CORS policy."""
    cors = settings or ApiServiceConfig()
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await backend.aclose()

    app = FastAPI(title="orchestr OpenAI-compatible API", version=__version__, lifespan=lifespan)
    if cors.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors.allowed_origins,
            allow_credentials=cors.allow_credentials,
            allow_methods=cors.allowed_methods or ["*"],
            allow_headers=cors.allowed_headers or ["*"],
        )

    @app.exception_handler(ApiError)
    async def _api_error(req: Request, exc: ApiError) -> JSONResponse:
        if exc.status >= 500:  # our side or a worker failed: worth a line in the log
            logger.warning("%s %s -> %d: %s", req.method, req.url.path, exc.status, exc.message)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(list(exc.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, f"Invalid URL ({req.method} {req.url.path})", code="unknown_url")
        if exc.status_code == 405:
            return error_response(
                405, f"Method {req.method} not allowed for {req.url.path}", code="method_not_allowed"
            )
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error: %r", exc)
        return error_response(500, f"Internal server error: {exc!r}", "server_error", code="internal_error")

    @app.get("/health", responses={200: {"content": {"application/json": {}}}})
    async def health() -> dict:
        return {"status": "ok"}

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(make_auth(api_keys or []))])

    @v1.get("/models", response_model=ModelList, responses=openapi.errors(401, 503))
    async def list_models():
        return await backend.router.list_models()

    @v1.get("/models/{model:path}", response_model=ModelCard, responses=openapi.errors(401, 404, 503))
    async def retrieve_model(model: str):
        return await backend.router.retrieve_model(model)

    def serve(shape: type[M], create: Callable[[M], Awaitable[BaseModel | AsyncIterator[str]]]):
        async def route(request: Request) -> Response:
            return await answer(request, create(await parse_model_request(request, shape)))

        return route

    # the routes whose serving object answers a parsed request (an object, or a stream of SSE lines)
    for path, name, shape, response, serving, stream in (
        ("/chat/completions", "chat_completions", ChatCompletionRequest, ChatCompletionResponse, backend.chat, True),
        ("/completions", "completions", CompletionRequest, CompletionResponse, backend.completions, True),
        ("/embeddings", "embeddings", EmbeddingsRequest, EmbeddingsResponse, backend.embeddings, False),
    ):
        v1.add_api_route(path, serve(shape, serving.create), methods=["POST"], name=name,
                         **openapi.operation(shape, response, stream=stream))

    @v1.post("/responses", **openapi.operation(ResponsesRequest, None, stream=True))
    async def responses(request: Request) -> Response:
        req = await parse_model_request(request, ResponsesRequest)
        result = await backend.responses.create(req)
        if isinstance(result, dict):
            return JSONResponse(result)
        return StreamingResponse(result, media_type="text/event-stream", headers=STREAM_HEADERS)

    # vLLM's tokenizer routes (at the root, as vLLM serves them)
    tok = APIRouter(dependencies=[Depends(make_auth(api_keys or []))])

    @tok.post("/tokenize", **openapi.operation(TokenizeRequest, TokenizeResponse))
    async def tokenize(request: Request) -> Response:
        req = await parse_body(request, TokenizeRequest)
        return JSONResponse((await backend.tokenizer.tokenize(req)).model_dump())

    @tok.post("/detokenize", **openapi.operation(DetokenizeRequest, DetokenizeResponse))
    async def detokenize(request: Request) -> Response:
        req = await parse_body(request, DetokenizeRequest)
        return JSONResponse((await backend.tokenizer.detokenize(req)).model_dump())

    @tok.get("/tokenizer_info")
    async def tokenizer_info(model: str | None = None) -> Response:
        return JSONResponse(await backend.tokenizer.tokenizer_info(model))

    app.include_router(v1)
    app.include_router(tok)
    mount_metrics(app, "api")
    openapi.install(app, [ChatCompletionRequest, CompletionRequest, EmbeddingsRequest, ResponsesRequest,
                          TokenizeRequest, DetokenizeRequest], bearer=bool(api_keys))
    return app


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m orchestr.services.openai_api_server", description=__doc__.split("\n")[0]
    )
    add_flags(parser, ApiServiceConfig)  # services.api: one declaration of each flag (config/serving.py)
    parser.add_argument("--controller-address", default="http://localhost:21001")
    # Deprecated: a key on the command line shows in `ps`; use env ORCHESTR_API_KEYS(_FILE).
    parser.add_argument("--api-keys", type=_csv, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        settings = from_args(ApiServiceConfig, args)  # with the schema's range checks
    except ValueError as e:
        parser.error(str(e))
    try:
        api_keys = secrets.api_keys()
    except secrets.SecretError as e:
        parser.exit(2, f"error: {e}\n")
    if args.api_keys is not None:
        logger.warning("--api-keys shows the keys to every user of this machine (ps); "
                       "set ORCHESTR_API_KEYS or ORCHESTR_API_KEYS_FILE instead")
        api_keys = args.api_keys

    app = create_app(ApiBackend(args.controller_address, settings), api_keys=api_keys, settings=settings)
    if secrets.service_secret() is None:
        logger.warning("NO SERVICE SECRET (ORCHESTR_SECRET / ORCHESTR_SECRET_FILE): workers and the "
                       "controller must be open to this server; keep them on 127.0.0.1")
    logger.info(
        "OpenAI API on %s:%d, controller %s, %s",
        args.host,
        args.port,
        args.controller_address,
        f"{len(api_keys)} API key(s)" if api_keys else "no API keys",
    )
    run_app(BodyLimit(app, args.max_body_bytes), args.host, args.port, ssl=args.ssl)


if __name__ == "__main__":
    main()
