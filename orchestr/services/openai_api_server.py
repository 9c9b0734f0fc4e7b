"""OpenAI-compatible REST API in front of the controller and its workers.

Routes authenticate, parse and validate; ``ApiBackend`` does the work. Every error a client can
see has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; parameter errors are
400 (as OpenAI answers), not FastAPI's default 422.

Run: ``python -m orchestr.services.openai_api_server --port 8000 --controller-address http://localhost:21001``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
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
from orchestr.services.api_errors import ApiError, client_message, unsupported
from orchestr.services.http_util import (
    BodyLimit,
    ClientGone,
    cancel_on_disconnect,
    error_response,
    run_app,
    setup_logging,
)
from orchestr.services.metrics import mount_metrics, set_model
from orchestr.services.rate_limit import AuthThrottle, RateLimits, client_key

logger = setup_logging("orchestr.api")

M = TypeVar("M", bound=BaseModel)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# parameters the schema allows only empty or null, because this server does not support them
SCHEMA_UNSUPPORTED = ("dimensions", "suffix")
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before"})


def _is_union_tag(part: object) -> bool:
    """A pydantic location part naming a union member (``list[int]``), not a parameter."""
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part)


def _closest(errors: list) -> dict:
    """The error that says most: of a union's failed members, one that had the right type
    (too long, too short, out of range) before the ones of the wrong type."""
    typed = [e for e in errors if not str(e.get("type", "")).endswith("_type")]
    return (typed or errors)[0]


def validation_error(errors: list) -> ApiError:
    """The most telling pydantic error as OpenAI would word it, naming the parameter."""
    err = _closest(errors)
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _is_union_tag(p)]
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":
        return ApiError(
            400,
            "We could not parse the JSON body of your request: " + str(err.get("msg", "")),
            code="invalid_json",
        )
    if not loc and err.get("type") == "model_type":
        return ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    if err.get("type") == "extra_forbidden" and len(loc) == 1 or loc and loc[0] in SCHEMA_UNSUPPORTED:
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
    try:  # strict, as OpenAI: no "16" or true for an integer
        return model.model_validate_json(body, strict=True)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    if any(_whole_float(err) for err in errors):  # 16.0 is an integer to JSON Schema (and to OpenAI)
        try:
            return model.model_validate(_floats_to_ints(json.loads(body)), strict=True)
        except ValidationError as e:
            errors = e.errors(include_url=False)
    raise validation_error(errors)


def _whole_float(err: dict) -> bool:
    value = err.get("input")
    return err.get("type") == "int_type" and isinstance(value, float) and value.is_integer()


def _floats_to_ints(value):
    """JSON numbers with no fraction as ints (a float parameter takes an int as well)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, list):
        return [_floats_to_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats_to_ints(v) for k, v in value.items()}
    return value


async def parse_model_request(request: Request, shape: type[M]) -> M:
    """``parse_body`` for a request that names a model, recorded for the request metrics."""
    req = await parse_body(request, shape)
    set_model(request, req.model)
    return req


def _key_matches(token: str, keys: frozenset[str]) -> bool:
    return any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)


def make_auth(api_keys: list[str], limits: RateLimits | None = None, throttle: AuthThrottle | None = None):
    """The /v1 and tokenizer routes' gate: the API key (failures slowed, then refused, per
    client address), then the client's request budget (429 with Retry-After when spent)."""
    keys = frozenset(api_keys)

    async def check_api_key(request: Request) -> None:
        address = request.client.host if request.client else None
        token = None
        if keys:
            if throttle is not None and (wait := throttle.locked_out(address or "")) is not None:
                raise ApiError(429, "Too many failed authentications from this address; try again later.",
                               "rate_limit_error", code="too_many_auth_failures", headers={"Retry-After": str(wait)})
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            token = token.strip()
            if not auth or scheme.lower() != "bearer" or not _key_matches(token, keys):
                if throttle is not None and (delay := throttle.failed(address or "")):
                    await asyncio.sleep(delay)
                if not auth:
                    raise ApiError(
                        401,
                        "You didn't provide an API key. Provide it in the Authorization header (Bearer auth).",
                        code="invalid_api_key",
                    )
                raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        if limits is not None and limits.enabled:
            who = client_key(token, address)
            request.state.rate_key = who
            refused = limits.admit(who)
            if refused is not None:
                which, wait = refused
                raise ApiError(429, f"Rate limit reached: this client's {which} per "
                                    f"{limits.requests.window_s:g} s are spent; retry in {wait} s.",
                               "rate_limit_error", code=f"rate_limit_{which}", headers={"Retry-After": str(wait)})

    return check_api_key


def _charge(request: Request, limits: RateLimits | None, tokens: int) -> None:
    key = getattr(request.state, "rate_key", None)
    if limits is not None and key is not None and tokens:
        limits.charge_tokens(key, tokens)


def _usage_tokens(result: BaseModel | dict) -> int:
    usage = result.get("usage") if isinstance(result, dict) else getattr(result, "usage", None)
    if isinstance(usage, dict):
        return int(usage.get("total_tokens") or 0)
    return int(getattr(usage, "total_tokens", 0) or 0)


def _error_event(err: ApiError, responses: bool) -> str:
    if responses:
        body = {"type": "error", "code": err.code, "message": err.message, "param": err.param}
        return f"event: error\ndata: {json.dumps(body)}\n\n"
    return f"data: {json.dumps(err.body())}\n\ndata: [DONE]\n\n"


async def guarded_stream(lines: AsyncIterator[str], request: Request, limits: RateLimits | None,
                         responses: bool = False) -> AsyncIterator[str]:
    """A route's SSE lines; whatever fails once the 200 went out ends the stream with an error
    event and a clean end (never a cut connection). Streamed events count as tokens of the
    client's token budget (about one per token)."""
    events = 0
    try:
        async for line in lines:
            events += line.count("\n\n")
            yield line
    except ApiError as e:
        yield _error_event(e, responses)
    except Exception as e:  # noqa: BLE001 - the client gets an error event; the log gets the rest
        logger.exception("stream failed: %r", e)
        yield _error_event(ApiError(500, "The server failed while streaming this answer.", "server_error",
                                    code="internal_error"), responses)
    finally:
        _charge(request, limits, events)
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            await aclose()


async def answer(request: Request, work: Awaitable[BaseModel | dict | AsyncIterator[str]],
                 limits: RateLimits | None = None, responses: bool = False) -> Response:
    """Run a route's work; a non-streaming answer is cancelled when its client leaves."""
    try:
        result = await cancel_on_disconnect(request, work)
    except ClientGone:
        return Response(status_code=499)
    if isinstance(result, BaseModel | dict):
        _charge(request, limits, _usage_tokens(result))
        if isinstance(result, dict):
            return JSONResponse(result)
        return Response(result.model_dump_json(), media_type="application/json")
    return StreamingResponse(guarded_stream(result, request, limits, responses), media_type="text/event-stream",
                             headers=STREAM_HEADERS)


class MetricsKey:
    """ASGI middleware: ``/metrics`` wants one of ``keys`` (API keys or the service secret)."""

    def __init__(self, app, keys: list[str]):
        self.app, self.keys = app, frozenset(k for k in keys if k)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics" and self.keys:
            auth = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not _key_matches(token.strip(), self.keys):
                response = error_response(401, "/metrics wants an API key (Bearer auth).",
                                          "authentication_error", code="invalid_api_key")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(backend: ApiBackend, api_keys: list[str] | None = None,
               settings: ApiServiceConfig | None = None) -> FastAPI:
    """The API app over ``backend``; ``settings`` (services.api) gives the CORS policy, the rate
    limits and whether /metrics wants a key."""
    cors = settings or ApiServiceConfig()
    limits = RateLimits(cors.rate_limit_requests, cors.rate_limit_tokens, cors.rate_limit_window_s)
    throttle = AuthThrottle(cors.auth_failures_free, cors.auth_failures_lockout, cors.auth_failure_window_s)
    gate = make_auth(api_keys or [], limits, throttle)
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
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(list(exc.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, f"Invalid URL ({req.method} {req.url.path})", code="unknown_url")
        if exc.status_code == 405:
            response = error_response(
                405, f"Method {req.method} not allowed for {req.url.path}", code="method_not_allowed"
            )
            response.headers.update(exc.headers or {})  # Starlette's Allow
            return response
        return error_response(exc.status_code, client_message(str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error: %r", exc)  # the details stay in the log
        return error_response(500, "Internal server error.", "server_error", code="internal_error")

    @app.get("/health", responses={200: {"content": {"application/json": {}}}})
    async def health() -> dict:
        return {"status": "ok"}

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(gate)])

    @v1.get("/models", response_model=ModelList, responses=openapi.errors(401, 429, 503))
    async def list_models():
        return await backend.router.list_models()

    @v1.get("/models/{model:path}", response_model=ModelCard, responses=openapi.errors(401, 404, 429, 503))
    async def retrieve_model(model: str):
        return await backend.router.retrieve_model(model)

    def serve(shape: type[M], create: Callable[[M], Awaitable[BaseModel | AsyncIterator[str]]]):
        async def route(request: Request) -> Response:
            return await answer(request, create(await parse_model_request(request, shape)), limits)

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
        return await answer(request, backend.responses.create(req), limits, responses=True)

    # vLLM's tokenizer routes (at the root, as vLLM serves them)
    tok = APIRouter(dependencies=[Depends(gate)])

    @tok.post("/tokenize", **openapi.operation(TokenizeRequest, TokenizeResponse))
    async def tokenize(request: Request) -> Response:
        req = await parse_body(request, TokenizeRequest)
        return JSONResponse((await backend.tokenizer.tokenize(req)).model_dump())

    @tok.post("/detokenize", **openapi.operation(DetokenizeRequest, DetokenizeResponse))
    async def detokenize(request: Request) -> Response:
        req = await parse_body(request, DetokenizeRequest)
        return JSONResponse((await backend.tokenizer.detokenize(req)).model_dump())

    @tok.get("/tokenizer_info", responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}},
                                           **openapi.errors(400, 401, 404, 429, 502, 503)})
    async def tokenizer_info(model: str | None = None) -> Response:
        return JSONResponse(await backend.tokenizer.tokenizer_info(model))

    app.include_router(v1)
    app.include_router(tok)
    mount_metrics(app, "api")
    if api_keys and cors.metrics_auth:
        app.add_middleware(MetricsKey, keys=[*api_keys, secrets.service_secret() or ""])
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
    run_app(BodyLimit(app, args.max_body_bytes), args.host, args.port, ssl=args.ssl,
            keep_alive_s=settings.keep_alive_timeout_s, header_timeout_s=settings.header_timeout_s)


if __name__ == "__main__":
    main()
