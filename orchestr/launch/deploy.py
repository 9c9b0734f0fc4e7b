"""Start a plan in dependency order, wait on health, watch and restart, stop."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from orchestr.config.serving import NodeConfig
from orchestr.errors import LaunchError, UserError
from orchestr.launch import secret_files
from orchestr.launch import state as state_mod
from orchestr.launch.backends import Runners
from orchestr.launch.probe import Liveness, Probe
from orchestr.launch.secret_files import read_service_secret
from orchestr.launch.spec import ProcessRecord, ProcessSpec
from orchestr.protocol import GenerateRequest, ModelListResponse


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def check_local_ports(specs: list[ProcessSpec], nodes: dict[str, NodeConfig]) -> None:
    for s in specs:
        node = nodes[s.node]
        if node.transport == "local" and s.port and port_in_use("127.0.0.1", s.port):
            raise UserError(f"{s.key}.port: port {s.port} is already in use on this machine "
                              f"(another deployment? `orchestr status` / `orchestr stop`, or pick another port)")


class Deployment:
    def __init__(self, specs: list[ProcessSpec], nodes: dict[str, NodeConfig], *, run_dir: Path,
                 log_dir: str | None, controller: str, api: str | None, web: str | None,
                 state_file: Path, health_timeout_s: float, secret_file: str | None = None) -> None:
        self.specs = specs
        self.runners = Runners(nodes)
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.health_timeout_s = health_timeout_s
        self.state_file = state_file
        self.state = state_mod.DeploymentState(run_dir=str(run_dir), controller=controller, api=api,
                                               web=web, nodes=nodes, secret_file=secret_file)
        self.probe: Probe | None = None
        self.probe_deadline_s = 5.0
        self._due: dict[str, float] = {}  # process -> when to restart it (inf: never)
        self._unreachable: set[str] = set()
        self.owner: str | None = None  # the watcher's token in the state file (None: not watching)

    def left(self) -> str | None:
        """Why this watcher no longer owns the deployment (stopped or taken over elsewhere);
        None while it does."""
        return state_mod.still_owned(self.state_file, self.owner) if self.owner else None

    def _save_watched(self) -> bool:
        """Record a watcher's change, unless the deployment is no longer its own (a save then
        would bring back a record `orchestr stop` removed, or undo its `stopping` mark)."""
        if self.left():
            return False
        state_mod.save(self.state, self.state_file)
        return True

    # ------------------------------------------------------------------ start
    def log_path(self, spec: ProcessSpec) -> str:
        node = self.state.nodes[spec.node]
        base = node.log_dir or self.log_dir or str(self.run_dir / "logs")
        if node.transport == "local":
            base = str(Path(base).expanduser().resolve())
        return f"{base}/{spec.name}.log"

    def start_all(self, on_event: Callable[[str], None] = print) -> None:
        try:
            for spec in self.specs:
                on_event(f"starting {spec.name} on {spec.node}: {spec.command_line()}")
                rec = self.runners[spec.node].start(spec, self.log_path(spec))
                self.state.processes.append(rec)
                state_mod.save(self.state, self.state_file)
                self.wait_healthy(rec, on_event)
        except BaseException:
            on_event("start failed; stopping what was started")
            self.stop_all(on_event)
            raise

    def wait_healthy(self, rec: ProcessRecord, on_event: Callable[[str], None]) -> None:
        spec = rec.spec
        runner = self.runners[spec.node]
        deadline = time.time() + self.health_timeout_s
        t0 = time.time()
        with service_client(self.state) as http:
            while True:
                if not runner.alive(rec):
                    tail = runner.read_log(rec, 25)
                    raise LaunchError(f"{spec.name} exited during start-up{self._start_hint(spec, tail)}; "
                                      f"last log lines ({rec.log_path}):\n{tail}")
                if self._is_up(http, spec):
                    on_event(f"{spec.name} is up ({time.time() - t0:.1f}s)")
                    return
                if time.time() > deadline:
                    raise LaunchError(f"{spec.name} not healthy after {self.health_timeout_s:.0f}s "
                                      f"(launch.health_timeout_s); log: {rec.log_path}")
                time.sleep(0.5)

    def _start_hint(self, spec: ProcessSpec, log_tail: str) -> str:
        """A next step for the start-up failures a node's set-up causes."""
        key = f"cluster.nodes.{spec.node}.python"
        if "No module named 'orchestr'" in log_tail or "No module named orchestr" in log_tail:
            return (f" ({spec.argv[0]} on node {spec.node!r} has no orchestr: set {key} to the "
                    "interpreter of a venv with orchestr installed, e.g. ~/venv/bin/python)")
        if "not found" in log_tail and spec.argv[0] in log_tail:
            return f" ({spec.argv[0]} is not on node {spec.node!r}: set {key})"
        return ""

    def _is_up(self, http: httpx.Client, spec: ProcessSpec) -> bool:
        try:
            if spec.health_url:
                r = http.get(spec.health_url)
                if r.status_code >= 300:
                    return False
            elif spec.port:
                host = self.state.nodes[spec.node].address
                if not port_in_use(host, spec.port):
                    return False
            if spec.models:
                listed = ModelListResponse.model_validate(
                    http.post(f"{self.state.controller}/list_models").json()).models
                if not set(spec.models) <= set(listed):
                    return False
                # registered is not enough: the worker must answer a generation
                base = spec.health_url.rsplit("/", 1)[0] if spec.health_url else None
                if base:
                    req = GenerateRequest(model=spec.models[0], prompt="Hi", max_new_tokens=1, temperature=0)
                    r = http.post(f"{base}/worker_generate", json=req.model_dump(), timeout=60.0)
                    return r.status_code == 200
            return True
        except (httpx.HTTPError, ValueError):
            return False

    # ------------------------------------------------------------------ watch
    def watch_once(self, on_event: Callable[[str], None] = print) -> None:
        """Restart processes that died, per their restart policy (called in a loop; never blocks
        on a backoff or on a node that does not answer).

        Services never exit on their own, so any exit counts as a failure: `on-failure` restarts
        up to `max_restarts` times within `window_s` (older failures are forgotten, so healthy
        uptime earns the budget back), with exponential backoff; `always` without a limit.
        Nodes are asked at once with a deadline: one that does not answer is reported as
        unreachable and skipped, never mistaken for dead processes.
        """
        if self.left():  # stopped or taken over: `orchestr stop` owns it now, never fight it
            return
        if self.probe is None:
            self.probe = Probe(self.runners, self.probe_deadline_s)
        live = self.probe.check(self.state.processes)
        for node, why in self.probe.errors.items():
            if node not in self._unreachable:
                on_event(f"node {node} does not answer ({why}); its processes are left as they are")
        self._unreachable = set(self.probe.errors)
        now = time.time()
        for i, rec in enumerate(self.state.processes):
            if live.get(rec.name) != Liveness.dead:
                continue
            policy = rec.spec.restart
            if rec.name not in self._due:  # just found dead
                rec.failures = [t for t in rec.failures if now - t < policy.window_s] + [now]
                rec.last_exit = self._exit_reason(rec, now)
                backoff = min(policy.backoff_s * 2 ** (len(rec.failures) - 1), policy.backoff_max_s)
                self._due[rec.name] = now + backoff
                if not self._save_watched():
                    return
                if policy.policy == "no" or (policy.policy != "always" and len(rec.failures) > policy.max_restarts):
                    on_event(f"{rec.name} is down: {rec.last_exit} (restart policy {policy.policy}, "
                             f"{len(rec.failures) - 1} restarts within {policy.window_s:.0f}s of "
                             f"{policy.max_restarts} allowed)")
                    self._due[rec.name] = float("inf")
                    continue
                on_event(f"{rec.name} died ({rec.last_exit}); restarting in {backoff:.1f}s "
                         f"(failure {len(rec.failures)} within {policy.window_s:.0f}s)")
            if now < self._due[rec.name]:
                continue
            if self.left():
                return
            runner = self.runners[rec.node]
            try:
                runner.stop(rec, timeout=5.0)  # leftovers of its group (children of the dead leader)
                new = runner.start(rec.spec, rec.log_path)
            except Exception as e:
                on_event(f"could not restart {rec.name} on {rec.node}: {e}")
                self._due[rec.name] = now + policy.backoff_max_s
                continue
            del self._due[rec.name]
            new.restarts, new.failures, new.last_exit = rec.restarts + 1, rec.failures, rec.last_exit
            self.state.processes[i] = new
            if not self._save_watched():  # stopped meanwhile: what we just started goes too
                runner.stop(new, timeout=5.0)
                return
            on_event(f"restarted {rec.name} on {rec.node} (pid {new.pid})")

    def _exit_reason(self, rec: ProcessRecord, now: float) -> str:
        """When it was found dead, after how long, and the last line it logged."""
        try:
            lines = [x for x in self.runners[rec.node].read_log(rec, 20).splitlines() if x.strip()]
        except Exception:
            lines = []
        last = lines[-1].strip()[:160] if lines else "no log output"
        return (f"found dead at {time.strftime('%H:%M:%S', time.localtime(now))} after "
                f"{now - rec.started_at:.0f}s up; last log line: {last}")

    # ------------------------------------------------------------------ stop
    def stop_all(self, on_event: Callable[[str], None] = print) -> None:
        stop_processes(self.state, self.runners, on_event)
        state_mod.remove(self.state_file)
        remove_secrets({s.node for s in self.specs}, self.runners, self.state_file, on_event)
        self.close()

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
        self.runners.close()


def service_client(state: state_mod.DeploymentState, timeout: float = 5.0) -> httpx.Client:
    """An HTTP client that carries the deployment's service secret to its internal services."""
    secret = read_service_secret(state.secret_file)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(timeout=timeout, trust_env=False, headers=headers)


def stop_processes(state: state_mod.DeploymentState, runners: Runners,
                   on_event: Callable[[str], None] = print) -> None:
    # reverse start order: front-ends first, so nobody sends work to a dying worker
    for rec in reversed(state.processes):
        try:
            runners[rec.node].stop(rec)
            on_event(f"stopped {rec.name} on {rec.node} (pid {rec.pid})")
        except Exception as e:  # keep stopping the others
            on_event(f"could not stop {rec.name} on {rec.node}: {e}")


def remove_secrets(nodes: set[str], runners: Runners, state_file: Path,
                   on_event: Callable[[str], None] = print) -> None:
    """The deployment's secret files: the copies on its nodes (an SSH node's), then those here."""
    folder = secret_files.secrets_dir(state_file)
    for node in sorted(nodes):
        try:
            runners[node].remove_files(folder)
        except Exception as e:  # keep going: the files here go in any case
            on_event(f"could not delete the secret files on {node}: {e}")
    secret_files.remove(folder)


def deployment_from_state(state: state_mod.DeploymentState, state_file: Path) -> Deployment:
    """Re-open a recorded deployment (for the detached supervisor and `orchestr stop`)."""
    dep = Deployment([p.spec for p in state.processes], state.nodes, run_dir=Path(state.run_dir),
                     log_dir=None, controller=state.controller, api=state.api, web=state.web,
                     state_file=state_file, health_timeout_s=0)
    dep.state = state
    return dep
