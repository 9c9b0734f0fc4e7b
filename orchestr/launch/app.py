"""`orchestr launch`: compose the config, render the plan, run it."""

from __future__ import annotations

import logging
import os
import secrets as token_source
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from orchestr.config import CONF_DIR, check_composes, register_configs
from orchestr.config.serving import LaunchConfig
from orchestr.errors import LaunchError, OrchestrError, UserError
from orchestr.launch import secret_files
from orchestr.launch import state as state_mod
from orchestr.launch.backends import Runners, preflight
from orchestr.launch.context import recorded_overrides
from orchestr.launch.deploy import Deployment, check_local_ports
from orchestr.launch.plan import Planner, build_plan, render_plan
from orchestr.launch.secret_files import DeploymentSecrets
from orchestr.launch.target import backend_nodes, backend_specs, scheduler_restarts


def _say(msg: str) -> None:
    print(f"[orchestr] {msg}", flush=True)


def print_endpoints(dep: Deployment) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="orchestr deployment")
    for col in ("process", "node", "pid", "endpoint", "log"):
        t.add_column(col)
    for rec in dep.state.processes:
        node = dep.state.nodes[rec.node]
        endpoint = f"http://{node.address}:{rec.spec.port}" if rec.spec.port else "-"
        if rec.name == "api":
            endpoint += "/v1"
        t.add_row(rec.name, rec.node, str(rec.pid), endpoint, rec.log_path)
    Console(width=200).print(t)


def _spawn_supervisor(state_file: Path, log_dir: Path) -> int:
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "supervisor.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestr.launch.supervisor", "--state-file", str(state_file)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return proc.pid


def run(cfg: DictConfig) -> int:
    # health polls are the launcher's business, not the user's: keep httpx's per-request lines out
    logging.getLogger("httpx").setLevel(logging.WARNING)
    launch: LaunchConfig = OmegaConf.to_object(cfg.launch)
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path("outputs")
    planner = Planner(cfg)
    secrets = DeploymentSecrets.from_config(launch, planner.services)
    # keys passed as overrides are in Hydra's record of the run: scrub them first
    secret_files.scrub([*run_dir.glob(".hydra/*"), *run_dir.glob("*.log")], secrets.values())
    specs = build_plan(cfg)  # a ConfigError reaches `orchestr`'s main: one line, exit code 2
    nodes = backend_nodes(launch, planner.cluster.nodes)
    if launch.backend == "kubernetes":
        from orchestr.launch.kubernetes import launch_dry_run

        return launch_dry_run(cfg, specs, launch)
    specs = backend_specs(launch, specs)
    if launch.dry_run:
        print(render_plan(specs, planner.cluster))
        return 0
    if scheduler_restarts(launch):
        launch.watch = False  # the scheduler restarts failed services: no second supervisor
    state_file = state_mod.state_path(launch.state_file)
    existing = state_mod.load(state_file)
    if existing is not None:
        runners = Runners(existing.nodes)
        try:
            alive = [p.name for p in existing.processes if runners[p.node].alive(p)]
        except Exception:
            alive = ["?"]
        finally:
            runners.close()
        if alive:
            raise UserError(f"a deployment is already running ({', '.join(alive)}; state {state_file}): "
                            "stop it with `orchestr stop`, or set launch.state_file to run another beside it")
        state_mod.remove(state_file)
    check_local_ports(specs, nodes)
    preflight(nodes, specs)  # can the backend place the plan? (exit 2 naming the key, before anything starts)
    secrets.write(planner.secrets_dir)
    ep = planner.endpoints()
    dep = Deployment(specs, nodes, run_dir=run_dir, log_dir=launch.log_dir,
                     controller=ep.controller, api=ep.api, web=ep.web, state_file=state_file,
                     health_timeout_s=launch.health_timeout_s,
                     secret_file=secret_files.secret_path(planner.secrets_dir, secret_files.SERVICE_VAR))
    dep.state.overrides = recorded_overrides(_task_overrides())
    dep.state.owner = token_source.token_hex(8)
    dep.state.owner_pid = None if launch.detach else os.getpid()
    stopping = False

    def _on_signal(signum, _frame):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        dep.start_all(_say)
    except KeyboardInterrupt:
        _say("interrupted; everything started was stopped")
        return 130
    except LaunchError as e:
        _say(f"launch failed: {e}")
        return 1
    print_endpoints(dep)
    if launch.detach:
        if launch.watch:
            dep.state.supervisor_pid = _spawn_supervisor(state_file, run_dir / "logs")
        state_mod.save(dep.state, state_file)
        dep.close()
        _say(f"detached; `orchestr status`, `orchestr logs NAME`, `orchestr stop` (state: {state_file})")
        return 0
    return _watch_attached(dep, launch)


def _watch_attached(dep: Deployment, launch: LaunchConfig) -> int:
    """Watch until Ctrl-C (then stop everything) or until the deployment is no longer ours
    (`orchestr stop` from another terminal, or a takeover): then leave it to them."""
    signalled = False

    def _on_signal(signum, _frame):
        nonlocal signalled
        signalled = True  # acted on between watch rounds, never in the middle of a restart

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    dep.owner = dep.state.owner
    _say("running; Ctrl-C stops everything")
    while not signalled:
        if reason := dep.left():
            _say(f"the deployment is no longer this launcher's: {reason}; exiting")
            dep.close()
            return 0
        if launch.watch:
            dep.watch_once(_say)
        for _ in range(10):
            if signalled:
                break
            time.sleep(0.1)
    if reason := dep.left():  # `orchestr stop` sent the signal: it stops the processes itself
        _say(f"the deployment is no longer this launcher's: {reason}; exiting")
        dep.close()
        return 0
    _say("stopping")
    dep.stop_all(_say)
    return 0


def _task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


register_configs()


_exit_codes: list[int] = []
_errors: list[OrchestrError] = []


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    # hydra.main drops the task's return value and reports exceptions its own way (a stack
    # trace, exit 1): keep both for `orchestr`'s main
    try:
        _exit_codes.append(run(cfg))
    except OrchestrError as e:
        _errors.append(e)


def main() -> int:
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    check_composes(sys.argv[1:])
    _hydra_main()
    if _errors:
        raise _errors[0]
    return max(_exit_codes, default=0)
