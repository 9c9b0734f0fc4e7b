"""What every model worker shares, whatever runs the model: registration with the controller,
heartbeats, the concurrency limit, and the worker HTTP API (FastChat's routes).

A backend hands :class:`WorkerBase` one engine per served model name. An engine needs
``async generate_stream(GenerateRequest) -> AsyncIterator[GenerateChunk]`` and
``count_tokens(req)`` (a ``CountTokenResult`` or a plain int); ``embed``, ``model_details``,
``tokenize``/``detokenize``/``tokenizer_info`` and ``shutdown`` are used when present (see
:class:`EngineAdapter`).

Every route but ``/health`` needs the deployment's service secret, and the worker sends it to
the controller. A heartbeat that finds the controller gone or not knowing this worker makes the
worker register again at once (retrying every second), so a restarted controller relearns it
within about a second of answering again.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from orchestr.config.flags import add_flags
from orchestr.config.serving import WorkerConfig, WorkerServiceConfig
from orchestr.protocol import (
    CountTokenRequest,
    CountTokenResult,
    DetokenizeRequest,
    EmbeddingRequest,
    EmbeddingResult,
    ErrorCode,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    HeartBeatRequest,
    HeartBeatResponse,
    ModelDetails,
    RegisterWorkerRequest,
    TokenizeRequest,
    WorkerStatus,
)
from orchestr.secrets import bearer, service_secret
from orchestr.services.http_util import ClientGone, cancel_on_disconnect
from orchestr.services.metrics import mount_metrics

log = logging.getLogger("orchestr.worker")
_W = WorkerServiceConfig()

REGISTER_RETRY_S = 1.0  # while the controller is unreachable
CONTROLLER_TIMEOUT_S = 5.0


class EngineAdapter:
    """Uniform access to an engine object, filling in what a backend does not provide."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def generate_stream(self, req: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        return self.engine.generate_stream(req)

    async def embed(self, req: EmbeddingRequest) -> EmbeddingResult:
        if not hasattr(self.engine, "embed"):
            return EmbeddingResult(error="this worker's backend does not compute embeddings",
                                   error_code=ErrorCode.INTERNAL_ERROR)
        return await self.engine.embed(req)

    def context_length(self) -> int:
        for attr in ("context_len", "context_length"):
            value = getattr(self.engine, attr, None)
            if isinstance(value, int):
                return value
        return 2048

    def count_tokens(self, req: CountTokenRequest) -> CountTokenResult:
        result = self.engine.count_tokens(req)
        if isinstance(result, CountTokenResult):
            return result
        return CountTokenResult(count=int(result), context_length=self.context_length())

    def model_details(self, name: str) -> ModelDetails:
        if hasattr(self.engine, "model_details"):
            return self.engine.model_details(name)
        return ModelDetails(model=name, context_length=self.context_length(),
                            backend=getattr(self.engine, "backend", "hf"),
                            dtype=getattr(self.engine, "dtype", None), device=getattr(self.engine, "device", None))

    def shutdown(self) -> None:
        if hasattr(self.engine, "shutdown"):
            self.engine.shutdown()


class WorkerBase:
    """Serves ``engines`` (model name -> engine; one engine may appear under several names)."""

    def __init__(self, engines: Mapping[str, Any], *, controller_address: str, worker_address: str,
                 limit_worker_concurrency: int = 5, register: bool = True, heart_beat_interval: float = 5.0,
                 controller_timeout: float = CONTROLLER_TIMEOUT_S) -> None:
        if not engines:
            raise ValueError("a worker needs at least one model")
        self.engines = {name: EngineAdapter(e) for name, e in engines.items()}
        self.model_names = list(engines)
        self.controller_address = controller_address.rstrip("/")
        self.worker_address = worker_address.rstrip("/")
        self.limit = max(1, limit_worker_concurrency)
        self.register = register
        self.heart_beat_interval = max(0.5, float(heart_beat_interval))
        self.controller_timeout = controller_timeout
        self.worker_id = uuid.uuid4().hex
        self._in_flight = 0  # requests admitted or waiting for the limit: FastChat's queue length
        self._semaphore: asyncio.Semaphore | None = None
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self.registered = threading.Event()

    # ------------------------------------------------------------------ status
    @property
    def queue_length(self) -> int:
        return self._in_flight

    def status(self) -> WorkerStatus:
        return WorkerStatus(model_names=self.model_names, speed=1, queue_length=self.queue_length,
                            worker_id=self.worker_id)

    def engine_for(self, model: str | None) -> EngineAdapter | None:
        if model in self.engines:
            return self.engines[model]
        if len({id(e.engine) for e in self.engines.values()}) == 1 and not model:
            return next(iter(self.engines.values()))
        return None

    # ------------------------------------------------------------------ controller link
    def register_once(self, client: httpx.Client) -> bool:
        body = RegisterWorkerRequest(worker_name=self.worker_address, check_heart_beat=True,
                                     worker_status=self.status())
        r = client.post(f"{self.controller_address}/register_worker", json=body.model_dump())
        r.raise_for_status()
        return True

    def heart_beat_once(self, client: httpx.Client) -> bool:
        """One heartbeat; False when the controller does not know this worker (it restarted)."""
        body = HeartBeatRequest(worker_name=self.worker_address, queue_length=self.queue_length,
                                worker_id=self.worker_id)
        r = client.post(f"{self.controller_address}/receive_heart_beat", json=body.model_dump())
        r.raise_for_status()
        return HeartBeatResponse.model_validate(r.json()).exist

    def _controller_loop(self) -> None:
        with httpx.Client(timeout=self.controller_timeout, headers=bearer(service_secret())) as client:
            while not self._stop.is_set():
                if not self.registered.is_set():
                    try:
                        self.register_once(client)
                        self.registered.set()
                        log.info("registered %s with controller %s as %s", self.model_names,
                                 self.controller_address, self.worker_address)
                    except httpx.HTTPError as exc:
                        log.warning("cannot register with controller %s (%s); retrying in %.0f s",
                                    self.controller_address, exc, REGISTER_RETRY_S)
                        self._stop.wait(REGISTER_RETRY_S)
                        continue
                if self._stop.wait(self.heart_beat_interval):
                    break
                try:
                    if not self.heart_beat_once(client):
                        log.warning("controller does not know this worker (restarted?): registering again")
                        self.registered.clear()
                except httpx.HTTPError as exc:
                    # Maybe it is restarting: register as soon as it answers again.
                    log.warning("heartbeat to %s failed (%s): registering again", self.controller_address, exc)
                    self.registered.clear()

    def start_controller_link(self) -> None:
        if self.register and self._heartbeat_thread is None:
            self._heartbeat_thread = threading.Thread(target=self._controller_loop, name="orchestr-heartbeat",
                                                      daemon=True)
            self._heartbeat_thread.start()

    def stop(self) -> None:
        self._stop.set()
        seen = set()
        for adapter in self.engines.values():
            if id(adapter.engine) not in seen:
                seen.add(id(adapter.engine))
                adapter.shutdown()

    # ------------------------------------------------------------------ request plumbing
    async def _limited_stream(self, adapter: EngineAdapter, req: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Chunks of one request under the concurrency limit; leaving early (client gone)
        closes the engine's stream, which cancels the request there."""
        self._in_flight += 1
        try:
            async with self._semaphore:
                stream = adapter.generate_stream(req)
                try:
                    async for chunk in stream:
                        yield chunk
                finally:
                    await stream.aclose()
        finally:
            self._in_flight -= 1

    # ------------------------------------------------------------------ app
    def create_app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_app: FastAPI):
            self._semaphore = asyncio.Semaphore(self.limit)
            self.start_controller_link()
            yield
            self.stop()

        app = FastAPI(title="orchestr model worker", lifespan=lifespan)
        mount_metrics(app, "worker")

        def unknown_model(model: str) -> str:
            return f"this worker serves {self.model_names}, not {model!r}"

        @app.post("/worker_generate_stream")
        async def worker_generate_stream(req: GenerateRequest) -> StreamingResponse:
            adapter = self.engine_for(req.model)

            async def lines():
                if adapter is None:
                    chunk = GenerateChunk(error=unknown_model(req.model), error_code=ErrorCode.INVALID_MODEL,
                                          finish_reason="error")
                    yield chunk.model_dump_json(exclude_none=True) + "\n"
                    return
                async for chunk in self._limited_stream(adapter, req):
                    yield chunk.model_dump_json(exclude_none=True) + "\n"

            return StreamingResponse(lines(), media_type="application/x-ndjson")

        @app.post("/worker_generate")
        async def worker_generate(req: GenerateRequest, request: Request) -> GenerateResult:
            adapter = self.engine_for(req.model)
            if adapter is None:
                return GenerateResult(error=unknown_model(req.model), error_code=ErrorCode.INVALID_MODEL,
                                      finish_reason="error")
            async def run() -> GenerateResult:
                return GenerateResult.from_chunks([chunk async for chunk in self._limited_stream(adapter, req)])

            # A client that leaves cancels the request, as a stream's does.
            try:
                return await cancel_on_disconnect(request, run())
            except ClientGone:
                return JSONResponse({}, status_code=499)

        @app.post("/worker_get_embeddings")
        async def worker_get_embeddings(req: EmbeddingRequest, request: Request) -> EmbeddingResult:
            adapter = self.engine_for(req.model)
            if adapter is None:
                return EmbeddingResult(error=unknown_model(req.model), error_code=ErrorCode.INVALID_MODEL)

            async def run() -> EmbeddingResult:
                self._in_flight += 1
                try:
                    async with self._semaphore:
                        return await adapter.embed(req)
                finally:
                    self._in_flight -= 1

            # A client that leaves (queued or running) cancels the work: the engine stops at its
            # next cancellation point (the transformers engine: before its next input).
            try:
                return await cancel_on_disconnect(request, run())
            except ClientGone:
                return JSONResponse({}, status_code=499)

        @app.post("/count_token")
        async def count_token(req: CountTokenRequest):
            adapter = self.engine_for(req.model)
            if adapter is None:
                return JSONResponse({"detail": unknown_model(req.model)}, status_code=404)
            try:
                return adapter.count_tokens(req)
            except ValueError as exc:
                return JSONResponse({"detail": str(exc)}, status_code=400)

        def tokenizer_call(model: str | None, method: str, *args):
            """A tokenizer route of the engine serving ``model`` (vLLM's shapes); 400 for bad input."""
            adapter = self.engine_for(model) if model else next(iter(self.engines.values()))
            if adapter is None:
                return JSONResponse({"detail": unknown_model(model or "")}, status_code=404)
            fn = getattr(adapter.engine, method, None)
            if fn is None:
                return JSONResponse({"detail": f"this worker's backend has no {method}"}, status_code=404)
            try:
                return fn(*args)
            except ValueError as exc:
                return JSONResponse({"detail": str(exc)}, status_code=400)

        @app.post("/tokenize")
        async def tokenize(req: TokenizeRequest):
            return tokenizer_call(req.model, "tokenize", req)

        @app.post("/detokenize")
        async def detokenize(req: DetokenizeRequest):
            return tokenizer_call(req.model, "detokenize", req)

        @app.post("/tokenizer_info")
        async def tokenizer_info(body: dict | None = Body(default=None)):
            return tokenizer_call((body or {}).get("model"), "tokenizer_info")

        @app.post("/worker_get_status")
        async def worker_get_status() -> WorkerStatus:
            return self.status()

        @app.post("/model_details")
        async def model_details(body: dict | None = Body(default=None)) -> ModelDetails:
            name = (body or {}).get("model") or self.model_names[0]
            adapter = self.engine_for(name)
            if adapter is None:
                return JSONResponse({"detail": unknown_model(name)}, status_code=404)
            return adapter.model_details(name)

        @app.get("/health")
        async def health(request: Request) -> dict:
            return {"status": "ok", "models": self.model_names, "queue_length": self.queue_length,
                    "registered": self.registered.is_set() if self.register else None}

        return app


# ---------------------------------------------------------------------- shared CLI flags


def add_worker_args(parser: argparse.ArgumentParser, default_port: int = 21002) -> None:
    """Flags every worker has (FastChat's names): services.worker and the worker's own section
    declare them (config/serving.py); the addresses are the launcher's wiring."""
    add_flags(parser, WorkerServiceConfig)
    add_flags(parser, WorkerConfig)
    parser.set_defaults(port=default_port)
    parser.add_argument("--worker-address", default=None,
                        help="URL the controller and API server use to reach this worker "
                             "(default: http://localhost:PORT)")
    parser.add_argument("--controller-address", default="http://localhost:21001")
    parser.add_argument("--no-register", action="store_true", help="do not register with a controller")


def worker_address(args: argparse.Namespace) -> str:
    return args.worker_address or f"http://localhost:{args.port}"


def add_model_path_args(parser: argparse.ArgumentParser, path_help: str) -> None:
    """``--model-path`` (what this worker's backend loads) and ``--model-names``."""
    parser.add_argument("--model-path", default="embedded://SmolLM2-135M-Instruct", help=path_help)
    parser.add_argument("--model-names", default=None,
                        help="comma-separated names this model is served under (default: the path's last part)")


def default_model_name(model_path: str) -> str:
    return model_path.rstrip("/").split("/")[-1].removesuffix(".gguf")


def served_names(args: argparse.Namespace) -> list[str]:
    """The names ``--model-names`` gives (comma-separated), else the model path's last part."""
    names = [n.strip() for n in (args.model_names or "").split(",") if n.strip()]
    return names or [default_model_name(args.model_path)]


def start_worker(parser: argparse.ArgumentParser, argv: list[str] | None, logger: str,
                 check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
                 import_backend: Callable[[], Any] | None = None,
                 ) -> tuple[argparse.Namespace, logging.Logger, list[str]]:
    """A single-model worker's first steps: its command line parsed and checked (``check`` calls
    ``parser.error``), its logging set up, and the names it serves. ``import_backend`` is tried
    before any slow model preparation: if it raises :class:`BackendMissing`, the worker prints
    ``error: <install hint>`` and exits with status 1 in a second."""
    args = parser.parse_args(argv)
    if check is not None:
        check(parser, args)
    from orchestr.services.http_util import setup_logging

    log = setup_logging(logger)
    names = served_names(args)
    if import_backend is not None:
        try:
            import_backend()
        except BackendMissing as e:
            print(f"error: {e.code}", file=sys.stderr)
            sys.exit(1)
    return args, log, names


class BackendMissing(SystemExit):
    """An optional backend cannot be imported; a SystemExit whose message is the one line to print."""


def import_backend(module: str, install_hint: str) -> Any:
    """Import an optional backend's package, or raise :class:`BackendMissing` with the install
    hint. A broken install (e.g. CUDA torchvision next to CPU torch) also lands here: say why."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        detail = "" if isinstance(e, ModuleNotFoundError) and e.name == module else f" ({e})"
        raise BackendMissing(install_hint + detail) from None


def serve_engines(engines: Mapping[str, Any], args: argparse.Namespace) -> None:
    """Serve ``engines`` (model name -> engine) behind a worker set up from the common flags."""
    worker = WorkerBase(engines, controller_address=args.controller_address, worker_address=worker_address(args),
                        limit_worker_concurrency=args.limit_worker_concurrency, register=not args.no_register,
                        heart_beat_interval=args.heart_beat_interval, controller_timeout=args.controller_timeout_s)
    serve(worker, args)


def serve(worker: WorkerBase, args: argparse.Namespace, on_exit: Callable[[], None] | None = None) -> None:
    from orchestr.services.http_util import protect, run_app

    app = protect(worker.create_app(), log, getattr(args, "max_body_bytes", _W.max_body_bytes))
    try:
        run_app(app, host=args.host, port=args.port, ssl=getattr(args, "ssl", False),
                keep_alive_s=getattr(args, "keep_alive_timeout_s", _W.keep_alive_timeout_s),
                header_timeout_s=getattr(args, "header_timeout_s", _W.header_timeout_s))
    finally:
        worker.stop()
        if on_exit is not None:
            on_exit()

