"""The controller: which workers serve which models, and which one should take the next request.

Workers register themselves (their base URL is their name), then send heartbeats carrying their
queue length. A background thread drops workers whose heartbeats stopped. Clients ask for a
worker address per request; the dispatch method picks among the workers serving that model.

Every route but ``/health`` needs the deployment's service secret (``orchestr.secrets``), and a
registration can take over an address only when the process answering there is the registrant
(its ``worker_id``), so nobody can replace a live worker's entry.

Run: ``python -m orchestr.services.controller --port 21001 --dispatch-method shortest_queue``.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI

from orchestr.config.flags import add_flags, from_args
from orchestr.config.serving import ControllerServiceConfig, DispatchMethod
from orchestr.protocol import (
    ControllerStatus,
    HeartBeatRequest,
    HeartBeatResponse,
    ModelListResponse,
    RegisterWorkerRequest,
    WorkerAddressRequest,
    WorkerAddressResponse,
    WorkerFailureReport,
    WorkerInfoView,
    WorkerStatus,
)
from orchestr.secrets import bearer, service_secret
from orchestr.services.http_util import error_response, protect, run_app, setup_logging
from orchestr.services.metrics import controller_metrics, mount_metrics

logger = setup_logging("orchestr.controller")

DISPATCH_METHODS = tuple(m.value for m in DispatchMethod)
STATUS_TIMEOUT_S = 5.0


@dataclass
class WorkerInfo:
    model_names: list[str]
    speed: int
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float
    multimodal: bool = False
    worker_id: str | None = None


def fetch_worker_status(worker_name: str, timeout: float = STATUS_TIMEOUT_S) -> WorkerStatus | None:
    """Ask a worker for its status; None when it does not answer properly."""
    if not worker_name.startswith(("http://", "https://")):
        return None
    try:
        r = httpx.post(worker_name.rstrip("/") + "/worker_get_status", timeout=timeout,
                       headers=bearer(service_secret()))
        r.raise_for_status()
        return WorkerStatus.model_validate(r.json())
    except (httpx.HTTPError, ValueError) as e:
        logger.warning("cannot get status of worker %s: %s", worker_name, e)
        return None


class Controller:
    """Worker registry and dispatcher. Thread-safe: routes and the expiry thread share it."""

    def __init__(self, dispatch_method: str = "shortest_queue", heart_beat_expiration: float = 30.0,
                 worker_timeout: float = STATUS_TIMEOUT_S):
        if dispatch_method not in DISPATCH_METHODS:
            raise ValueError(f"unknown dispatch method {dispatch_method!r}; choose from {DISPATCH_METHODS}")
        self.dispatch_method = dispatch_method
        self.heart_beat_expiration = heart_beat_expiration
        self.worker_timeout = worker_timeout  # per call to a worker's /worker_get_status
        self.workers: dict[str, WorkerInfo] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ registration

    def register_worker(
        self,
        worker_name: str,
        check_heart_beat: bool = True,
        worker_status: WorkerStatus | None = None,
        multimodal: bool = False,
    ) -> bool:
        if worker_status is None:
            worker_status = fetch_worker_status(worker_name, self.worker_timeout)
            if worker_status is None:
                return False
        with self._lock:
            old = self.workers.get(worker_name)
        if old is not None and old.worker_id and old.worker_id != worker_status.worker_id and self._live(old):
            # Another process holds this address: only the one answering there may take it over
            # (a worker restarted on the same port).
            answering = fetch_worker_status(worker_name, self.worker_timeout)
            if answering is None or answering.worker_id != worker_status.worker_id:
                logger.warning("refused a registration of %s: another live worker holds that address",
                               worker_name)
                return False
        info = WorkerInfo(
            model_names=list(worker_status.model_names),
            speed=max(int(worker_status.speed), 1),
            queue_length=int(worker_status.queue_length),
            check_heart_beat=check_heart_beat,
            last_heart_beat=time.time(),
            multimodal=multimodal,
            worker_id=worker_status.worker_id,
        )
        with self._lock:
            known = worker_name in self.workers
            self.workers[worker_name] = info
        logger.info(
            "%s worker %s serving %s",
            "re-registered" if known else "registered",
            worker_name,
            info.model_names,
        )
        return True

    def _live(self, info: WorkerInfo) -> bool:
        return time.time() - info.last_heart_beat < self.heart_beat_expiration

    def check_reported_worker(self, worker_name: str) -> bool:
        """A client could not use this worker: drop it now unless it answers (it re-registers
        on its next heartbeat when it comes back). Returns whether it is still listed."""
        with self._lock:
            if worker_name not in self.workers:
                return False
        if fetch_worker_status(worker_name, min(2.0, self.worker_timeout)) is not None:
            return True
        logger.info("dropped worker %s: reported failing and does not answer", worker_name)
        self.remove_worker(worker_name)
        return False

    def remove_worker(self, worker_name: str) -> None:
        with self._lock:
            self.workers.pop(worker_name, None)

    def refresh_all_workers(self) -> None:
        """Re-read every worker's status; workers that do not answer are dropped."""
        with self._lock:
            old = dict(self.workers)
        for name, info in old.items():
            if not self.register_worker(name, info.check_heart_beat, None, info.multimodal):
                logger.info("dropping unresponsive worker %s", name)
                self.remove_worker(name)

    def receive_heart_beat(self, worker_name: str, queue_length: int, worker_id: str | None = None) -> bool:
        with self._lock:
            info = self.workers.get(worker_name)
            if info is None or (worker_id and info.worker_id and worker_id != info.worker_id):
                # Unknown (e.g. the controller restarted) or not the registered process:
                # tell the worker to register (again).
                return False
            info.queue_length = queue_length
            info.last_heart_beat = time.time()
        return True

    def remove_stale_workers(self) -> list[str]:
        cutoff = time.time() - self.heart_beat_expiration
        with self._lock:
            stale = [n for n, w in self.workers.items() if w.check_heart_beat and w.last_heart_beat < cutoff]
            for name in stale:
                del self.workers[name]
        for name in stale:
            logger.info("dropped worker %s: no heartbeat for %.0f s", name, self.heart_beat_expiration)
            controller_metrics().removals.labels(name).inc()
        return stale

    def start_expiry_thread(self) -> None:
        if self._thread is not None:
            return
        # Check often enough that a worker is dropped within ~1/3 of the expiration after it goes silent.
        interval = max(0.2, min(self.heart_beat_expiration / 3.0, 30.0))

        def loop() -> None:
            while not self._stop.wait(interval):
                self.remove_stale_workers()

        self._thread = threading.Thread(target=loop, name="heart-beat-expiry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ queries

    def list_models(self, multimodal: bool | None = None) -> list[str]:
        """Models of live workers; ``multimodal`` True/False keeps only (non-)multimodal ones."""
        with self._lock:
            return sorted(
                {
                    m
                    for w in self.workers.values()
                    if multimodal is None or w.multimodal == multimodal
                    for m in w.model_names
                }
            )

    def get_worker_address(self, model_name: str) -> str:
        with self._lock:
            candidates = [(n, w) for n, w in self.workers.items() if model_name in w.model_names]
            if not candidates:
                return ""
            if self.dispatch_method == "lottery":
                names = [n for n, _ in candidates]
                weights = [w.speed for _, w in candidates]
                return random.choices(names, weights=weights, k=1)[0]
            # shortest_queue: least queued work per unit of speed; ties broken at random so
            # equal workers share the load.
            scores = [w.queue_length / w.speed for _, w in candidates]
            best = min(scores)
            name, info = random.choice([c for c, s in zip(candidates, scores, strict=True) if s == best])
            # Count the request we are handing out until the next heartbeat says otherwise.
            info.queue_length += 1
            return name

    def status(self) -> ControllerStatus:
        with self._lock:
            workers = [
                WorkerInfoView(
                    worker_name=n,
                    model_names=w.model_names,
                    speed=w.speed,
                    queue_length=w.queue_length,
                    check_heart_beat=w.check_heart_beat,
                    last_heart_beat=w.last_heart_beat,
                )
                for n, w in sorted(self.workers.items())
            ]
        return ControllerStatus(
            model_names=sorted({m for w in workers for m in w.model_names}),
            speed=sum(w.speed for w in workers),
            queue_length=sum(w.queue_length for w in workers),
            workers=workers,
        )


def create_app(controller: Controller) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        controller.start_expiry_thread()
        yield
        controller.stop()

    app = FastAPI(title="orchestr controller", lifespan=lifespan)
    mount_metrics(app, "controller")
    metrics = controller_metrics()

    # Plain `def` routes: FastAPI runs them in its thread pool, so the blocking status fetch
    # in registration never stalls heartbeats or dispatch.
    @app.post("/register_worker")
    def register_worker(req: RegisterWorkerRequest):
        ok = controller.register_worker(
            req.worker_name, req.check_heart_beat, req.worker_status, req.multimodal
        )
        metrics.registrations.labels(req.worker_name, str(bool(ok)).lower()).inc()
        if not ok:
            return error_response(409, f"registration of {req.worker_name} refused: it does not answer as "
                                       "this worker, or another live worker holds that address",
                                  code="registration_refused")
        return {"ok": ok}

    @app.post("/report_worker_failure")
    def report_worker_failure(req: WorkerFailureReport) -> dict:
        return {"listed": controller.check_reported_worker(req.worker_name)}

    @app.post("/refresh_all_workers")
    def refresh_all_workers() -> dict:
        controller.refresh_all_workers()
        return {"ok": True}

    @app.post("/receive_heart_beat")
    def receive_heart_beat(req: HeartBeatRequest) -> HeartBeatResponse:
        exist = controller.receive_heart_beat(req.worker_name, req.queue_length, req.worker_id)
        metrics.heartbeats.labels(req.worker_name, str(exist).lower()).inc()
        return HeartBeatResponse(exist=exist)

    @app.post("/list_models")
    def list_models() -> ModelListResponse:
        return ModelListResponse(models=controller.list_models())

    @app.post("/list_multimodal_models")
    def list_multimodal_models() -> ModelListResponse:
        return ModelListResponse(models=controller.list_models(multimodal=True))

    @app.post("/list_language_models")
    def list_language_models() -> ModelListResponse:
        return ModelListResponse(models=controller.list_models(multimodal=False))

    @app.post("/get_worker_address")
    def get_worker_address(req: WorkerAddressRequest) -> WorkerAddressResponse:
        address = controller.get_worker_address(req.model)
        metrics.dispatches.labels(req.model, address or "none", controller.dispatch_method).inc()
        return WorkerAddressResponse(address=address)

    @app.post("/worker_get_status")
    def worker_get_status() -> ControllerStatus:
        return controller.status()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m orchestr.services.controller", description=__doc__.split("\n")[0]
    )
    add_flags(parser, ControllerServiceConfig)  # one declaration of each flag (config/serving.py)
    args = parser.parse_args(argv)
    try:
        from_args(ControllerServiceConfig, args)  # the schema's range checks
    except ValueError as e:
        parser.error(str(e))
    controller = Controller(args.dispatch_method, args.heart_beat_expiration, args.worker_timeout_s)
    logger.info("controller on %s:%d, dispatch %s", args.host, args.port, args.dispatch_method)
    run_app(protect(create_app(controller), logger), args.host, args.port, ssl=args.ssl,
            keep_alive_s=args.keep_alive_timeout_s, header_timeout_s=args.header_timeout_s)


if __name__ == "__main__":
    main()
