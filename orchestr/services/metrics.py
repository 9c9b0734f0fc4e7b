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

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        start = time.monotonic()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        if path != "/metrics":
            model = getattr(request.state, "metrics_model", "")
            _REQUESTS.labels(service, path, model, str(response.status_code)).inc()
            _LATENCY.labels(service, path).observe(time.monotonic() - start)
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


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
