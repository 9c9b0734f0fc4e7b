"""``GET /metrics`` (Prometheus text format) for every orchestr service, and the HTTP-level metrics
they share: requests by route, model and status, and their latency. Engine metrics (vLLM's names)
come from ``orchestr.engine.metrics``; the controller's from :class:`ControllerMetrics`."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

_REQUESTS = Counter("orchestr:http_requests", "HTTP requests answered.", ["service", "route", "model", "status"])
_LATENCY = Histogram("orchestr:http_request_duration_seconds", "Time to the response head (streams: to the first "
                     "byte).", ["service", "route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                                               10, 30, 60, 120))


def set_model(request: Request, model: str | None) -> None:
    """Label this request's metrics with the model it asked for (routes call this once parsed)."""
    request.state.metrics_model = model or ""


def mount_metrics(app: FastAPI, service: str) -> None:
    """Serve ``/metrics`` and count every request of ``app`` under ``service``."""
    app.add_middleware(RequestMetrics, service=service)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware: counts each request by route, model and status and times it to the
    response head. Plain ASGI, not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    passes every chunk of a streamed response through a memory stream, which on the token
    streams of the worker and the API server cost more CPU than the route itself."""

    def __init__(self, app, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        state = scope.setdefault("state", {})  # request.state of the route: where set_model writes
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if path != "/metrics":
                _REQUESTS.labels(self.service, path, state.get("metrics_model", ""), str(status)).inc()
                _LATENCY.labels(self.service, path).observe(time.monotonic() - start)

        async def send_counted(message) -> None:
            if message["type"] == "http.response.start" and not counted:
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            if not counted:
                count(500)  # the error handler outside answers 500
            raise


class ControllerMetrics:
    """Worker registrations, heartbeats and dispatch decisions at the controller."""

    def __init__(self) -> None:
        self.registrations = Counter("orchestr:controller_worker_registrations", "Worker registrations.",
                                     ["worker", "accepted"])
        self.heartbeats = Counter("orchestr:controller_heart_beats", "Heartbeats received.", ["worker", "known"])
        self.dispatches = Counter("orchestr:controller_dispatches", "Worker address requests answered.",
                                  ["model", "worker", "method"])
        self.removals = Counter("orchestr:controller_worker_removals", "Workers dropped (heartbeat expired).",
                                ["worker"])


_controller_metrics: ControllerMetrics | None = None


def controller_metrics() -> ControllerMetrics:
    global _controller_metrics
    if _controller_metrics is None:
        _controller_metrics = ControllerMetrics()
    return _controller_metrics
