"""What a benchmark drives: a running server given by URL, or a server the benchmark launches
itself (an orchestr deployment, vLLM's own OpenAI server) and stops when its levels are done.

A target is written ``NAME=KIND:ARGS`` (``NAME=`` optional):

* ``url:http://host:port/v1``: an OpenAI-compatible server that is already running;
* ``worker:http://host:port``: an orchestr worker, driven through ``/worker_generate_stream``;
* ``orchestr:OVERRIDES``: ``orchestr launch`` (detached, web UI off, free ports) with these Hydra
  overrides, e.g. ``orchestr:engine.batching=false model.dtype=float32``; with ``--direct-worker``
  its worker is measured directly too (endpoint ``NAME/worker``), for the API + controller cost;
* ``vllm:ARGS``: ``python -m vllm.entrypoints.openai.api_server`` from the vLLM venv on the
  embedded model's safetensors folder (bf16, ``--max-model-len 2048``, ``--disable-log-stats``
  except for the workloads beside fixed, which read its prefix-cache counters), ARGS appended;
* ``openvino:KEY=VALUE ...``: OpenVINO GenAI's ContinuousBatchingPipeline in this process, no
  HTTP (the upper bound for the OpenVINO worker, which is ``orchestr:model=smollm2-135m-openvino``);
  keys: threads, dtype, max_batch_size, max_num_batched_tokens, kv_cache_tokens, weight_format.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from orchestr.errors import OrchestrError

KINDS = ("url", "worker", "orchestr", "vllm", "openvino")
WORKER_SERVICES = ("model_worker", "vllm_worker", "multi_model_worker", "openvino_worker")
REPO = Path(__file__).resolve().parents[2]


class BenchError(OrchestrError, RuntimeError):
    """A target that cannot be parsed, started or reached; the message is for the user."""


@dataclass
class Endpoint:
    name: str
    protocol: str  # openai | worker | inprocess
    base_url: str
    pids: dict[str, int] = field(default_factory=dict)  # server processes whose RSS is sampled
    local: Any = None  # an in-process driver (run_level, warm_up) instead of a URL
    metrics_url: str | None = None  # the Prometheus /metrics with the engine's counters, if known
    metrics_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class BenchOptions:
    """Settings the launched servers share."""

    model_name: str = "smollm2-135m"
    model_path: str = "embedded://SmolLM2-135M-Instruct"
    direct_worker: bool = False
    vllm_python: str | None = None
    vllm_stats: bool = False  # launched vLLM keeps its stats (and Prometheus counters) on
    start_timeout_s: float = 900.0
    work_dir: Path | None = None
    log: Callable[[str], None] = print


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A target: ``start()`` returns its endpoints, ``stop()`` ends what ``start()`` began."""

    def __init__(self, name: str, kind: str, args: str, opts: BenchOptions) -> None:
        self.name, self.kind, self.args, self.opts = name, kind, args, opts

    def describe(self) -> str:
        return f"{self.kind}:{self.args}" if self.args else self.kind

    def start(self) -> list[Endpoint]:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class UrlServer(Server):
    def start(self) -> list[Endpoint]:
        if not self.args.startswith(("http://", "https://")):
            raise BenchError(f"{self.name}: {self.kind}: needs a URL (http://...), got {self.args!r}")
        base = self.args.rstrip("/")
        if self.kind == "url":  # an OpenAI server's /metrics sits beside /v1
            return [Endpoint(self.name, "openai", base, metrics_url=f"{base.removesuffix('/v1')}/metrics")]
        from orchestr.secrets import bearer, service_secret

        return [Endpoint(self.name, "worker", base, metrics_url=f"{base}/metrics",
                         metrics_headers=bearer(service_secret()))]


class OrchestrServer(Server):
    """`orchestr launch` detached on free ports; stopped with `orchestr stop` on the same state file."""

    def start(self) -> list[Endpoint]:
        root = Path(tempfile.mkdtemp(prefix=f"bench-{_slug(self.name)}-", dir=self.opts.work_dir))
        self.state_file = root / "state.json"
        api_port, ctl_port, worker_port = free_port(), free_port(), free_port()
        user = shlex.split(self.args)
        # One worker named worker-0 on this machine: cluster=local unless the overrides pick
        # another single-worker cluster (e.g. cluster=local_vllm).
        cluster = [] if any(o.startswith("cluster=") for o in user) else ["cluster=local"]
        overrides = [
            *cluster, "services.web.enabled=false", "launch.detach=true", "launch.watch=false",
            f"launch.state_file={self.state_file}", f"launch.log_dir={root / 'logs'}",
            f"launch.health_timeout_s={self.opts.start_timeout_s}",
            f"services.api.port={api_port}", f"services.controller.port={ctl_port}",
            f"cluster.workers.worker-0.port={worker_port}",
            *user,
        ]
        cmd = [sys.executable, "-m", "orchestr", "launch", *overrides]
        self.opts.log(f"[{self.name}] starting: {shlex.join(cmd[1:])}")
        env = {**os.environ, "ORCHESTR_RUNS_DIR": str(root / "runs")}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=self.opts.start_timeout_s + 120)
        if proc.returncode != 0:
            self.stop()
            raise BenchError(f"{self.name}: orchestr launch failed (rc={proc.returncode}); logs in "
                             f"{root / 'logs'}\n{(proc.stdout + proc.stderr)[-2000:]}")
        from orchestr.launch import state as state_mod

        state = state_mod.load(self.state_file)
        if state is None or not state.api:
            raise BenchError(f"{self.name}: the launch recorded no API server ({self.state_file})")
        pids = {p.name: p.pid for p in state.processes if p.pid}
        endpoints = [Endpoint(self.name, "openai", state.api.rstrip("/"), pids)]
        workers = [p for p in state.processes if p.spec.service in WORKER_SERVICES]
        if len(workers) == 1:  # the engine's counters (prefix cache) are on the worker's /metrics
            w = workers[0]
            worker_url = f"http://{state.nodes[w.node].address}:{w.spec.port}"
            try:
                secret = Path(state.secret_file).read_text().strip() if state.secret_file else None
            except OSError:  # then no counters: /metrics answers 401, the hit rate is left out
                secret = None
            endpoints[0].metrics_url = f"{worker_url}/metrics"
            endpoints[0].metrics_headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        if self.opts.direct_worker:
            if len(workers) != 1:
                raise BenchError(f"{self.name}: --direct-worker needs exactly one worker, found {len(workers)}")
            w = workers[0]
            if state.secret_file:  # the worker asks for the deployment's service secret
                os.environ["ORCHESTR_SECRET_FILE"] = state.secret_file
                os.environ.pop("ORCHESTR_SECRET", None)
            endpoints.append(Endpoint(f"{self.name}/worker", "worker", worker_url, {w.name: w.pid},
                                      metrics_url=endpoints[0].metrics_url,
                                      metrics_headers=endpoints[0].metrics_headers))
        return endpoints

    def stop(self) -> None:
        state_file = getattr(self, "state_file", None)
        if state_file is None or not state_file.exists():
            return
        env = {**os.environ, "ORCHESTR_STATE_FILE": str(state_file)}
        subprocess.run([sys.executable, "-m", "orchestr", "stop"], env=env, capture_output=True,
                       text=True, timeout=300)


class VllmServer(Server):
    """vLLM's own OpenAI server (the CPU build in .venv-vllm), in its own process group."""

    def python(self) -> str:
        for cand in (self.opts.vllm_python, ".venv-vllm/bin/python", str(REPO / ".venv-vllm/bin/python")):
            if cand and Path(cand).is_file():
                return cand
        raise BenchError(f"{self.name}: no vLLM environment (looked for .venv-vllm/bin/python); "
                         "create it with scripts/setup_vllm.sh or pass --vllm-python")

    def start(self) -> list[Endpoint]:
        from orchestr.engine.loader import resolve_model_path

        python = self.python()
        folder = resolve_model_path(self.opts.model_path)
        port = free_port()
        root = Path(tempfile.mkdtemp(prefix=f"bench-{_slug(self.name)}-", dir=self.opts.work_dir))
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
               "--served-model-name", self.opts.model_name, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "bfloat16", "--max-model-len", "2048",
               *([] if self.opts.vllm_stats else ["--disable-log-stats"]), *shlex.split(self.args)]
        # On the CPU build the KV cache is a fixed share of RAM in GiB.
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
        self.log_path = root / "vllm.log"
        self.opts.log(f"[{self.name}] starting: {shlex.join(cmd)} (log {self.log_path})")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.opts.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise BenchError(f"{self.name}: vLLM server exited (rc={self.proc.returncode}):\n{tail}")
            try:
                if httpx.get(f"{base}/health", timeout=2.0).status_code == 200:
                    return [Endpoint(self.name, "openai", f"{base}/v1", {"vllm": self.proc.pid},
                                     metrics_url=f"{base}/metrics")]
            except httpx.HTTPError:
                pass
            time.sleep(2.0)
        self.stop()
        raise BenchError(f"{self.name}: vLLM server not healthy after {self.opts.start_timeout_s:.0f} s "
                         f"(log {self.log_path})")

    def stop(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


class OpenVinoInProcessServer(Server):
    """OpenVINO GenAI's pipeline in the benchmark's own process (RSS: the benchmark process)."""

    def start(self) -> list[Endpoint]:
        from orchestr.benchmark.openvino_inprocess import OpenVinoInProcess, parse_settings
        from orchestr.engine.loader import ModelLoadError
        from orchestr.engine.openvino_export import resolve_openvino_model

        try:
            settings = parse_settings(self.args)
        except ValueError as e:
            raise BenchError(f"{self.name}: {e}") from None
        try:
            import openvino_genai  # noqa: F401
        except ImportError:
            raise BenchError(f"{self.name}: openvino-genai is not installed (scripts/setup_openvino.sh)") from None
        try:
            folder = resolve_openvino_model(self.opts.model_path, settings["weight_format"])
        except ModelLoadError as e:
            raise BenchError(f"{self.name}: {e}") from None
        self.opts.log(f"[{self.name}] OpenVINO GenAI pipeline in process on {folder} ({self.args or 'defaults'})")
        driver = self.driver = OpenVinoInProcess(folder, settings)
        return [Endpoint(self.name, "inprocess", f"openvino-genai:{folder}", {"bench+openvino": driver.pid},
                         local=driver)]

    def stop(self) -> None:
        self.driver = None  # the pipeline and its KV cache go with the last reference


_CLASSES: dict[str, type[Server]] = {"url": UrlServer, "worker": UrlServer, "orchestr": OrchestrServer,
                                     "vllm": VllmServer, "openvino": OpenVinoInProcessServer}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def parse_target(text: str, opts: BenchOptions) -> Server:
    """``[NAME=]KIND[:ARGS]`` or a bare URL -> a Server."""
    text = text.strip()
    name = None
    head = text.split(":", 1)[0]
    if "=" in head:
        name, text = text.split("=", 1)
        name = name.strip()
    if text.startswith(("http://", "https://")):
        kind, args = "url", text
    else:
        kind, _, args = text.partition(":")
        kind = kind.strip()
    if kind not in KINDS:
        raise BenchError(f"target {text!r}: unknown kind {kind!r} (one of {', '.join(KINDS)}, or a URL)")
    if not name:
        name = kind if kind in ("orchestr", "vllm", "openvino") else args
    return _CLASSES[kind](name, kind, args.strip(), opts)
