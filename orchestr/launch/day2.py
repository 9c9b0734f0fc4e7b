"""`orchestr status`, `orchestr logs`, `orchestr stop`: day-2 commands over the state file."""

from __future__ import annotations

import argparse
import os
import sys

import httpx

from orchestr.launch import state as state_mod
from orchestr.launch.backends import Runners
from orchestr.launch.deploy import remove_secrets, service_client, stop_processes
from orchestr.launch.probe import Liveness, Probe
from orchestr.protocol import ControllerStatus


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--state-file", default=None,
                   help="deployment state file (default: $ORCHESTR_STATE_FILE or ~/.cache/orchestr/deployment.json)")
    return p


def _load(path_arg: str | None) -> tuple[state_mod.DeploymentState | None, str]:
    path = state_mod.state_path(path_arg)
    return state_mod.load(path), str(path)


def _nothing_recorded(path: str, rc: int) -> int:
    print(f"no deployment recorded ({path})", file=sys.stderr if rc else sys.stdout)
    return rc


def registered_workers(state: state_mod.DeploymentState) -> dict[str, list[str]] | None:
    """worker address -> model names, as the controller sees it; None when it does not answer."""
    try:
        with service_client(state, timeout=3.0) as http:
            st = ControllerStatus.model_validate(http.post(f"{state.controller}/worker_get_status").json())
        return {w.worker_name: w.model_names for w in st.workers}
    except (httpx.HTTPError, ValueError):
        return None


def status_main() -> int:
    args = _parser("orchestr status", "Show the processes of the running deployment.").parse_args()
    state, path = _load(args.state_file)
    if state is None:
        return _nothing_recorded(path, 1)
    from rich.console import Console
    from rich.table import Table

    workers = registered_workers(state)
    runners = Runners(state.nodes)
    probe = Probe(runners)  # every node at once, with a deadline: an unreachable one never stalls
    table = Table(title=f"deployment {state.run_dir}")
    for col in ("process", "service", "node", "pid", "state", "registered", "models", "restarts", "last exit",
                "endpoint"):
        table.add_column(col)
    try:
        live = probe.check(state.processes)
        for node, why in probe.errors.items():
            print(f"node {node} does not answer: {why}", file=sys.stderr)
        for rec in state.processes:
            node = state.nodes[rec.node]
            endpoint = f"http://{node.address}:{rec.spec.port}" if rec.spec.port else "-"
            if rec.spec.models:
                if workers is None:
                    reg = "controller down"
                else:
                    reg = "yes" if endpoint in workers else "no"
            else:
                reg = "-"
            shown = live[rec.name] if live[rec.name] == Liveness.running else live[rec.name].upper()
            recent = f" ({len(rec.failures)} failures in window)" if rec.failures else ""
            table.add_row(rec.name, rec.spec.service, rec.node, str(rec.pid), shown, reg,
                          ",".join(rec.spec.models) or "-", f"{rec.restarts}{recent}", rec.last_exit or "-",
                          endpoint)
    finally:
        probe.close()
        runners.close()
    all_alive = all(v == Liveness.running for v in live.values())
    Console(width=240).print(table)
    if state.api:
        print(f"OpenAI API: {state.api}")
    if state.web:
        print(f"Web UI:     {state.web}")
        for problem in web_problems(state.web):
            print(f"Web UI problem: {problem}")
    return 0 if all_alive else 3


def web_problems(web: str) -> list[str]:
    """What the web UI's health check reports (e.g. a log folder it cannot write); none if it is silent."""
    import httpx

    try:
        return list(httpx.get(web.rstrip("/") + "/health", timeout=3.0).json().get("problems", []))
    except (httpx.HTTPError, ValueError, AttributeError):
        return []


def logs_main() -> int:
    p = _parser("orchestr logs", "Print one process's log (controller, api, web, a worker's name).")
    p.add_argument("name", help="process name as `orchestr status` lists it")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=100)
    args = p.parse_args()
    state, path = _load(args.state_file)
    if state is None:
        return _nothing_recorded(path, 1)
    rec = state.record(args.name)
    if rec is None:
        names = ", ".join(p.name for p in state.processes)
        print(f"no process named {args.name!r} (have: {names})", file=sys.stderr)
        return 2
    runners = Runners(state.nodes)
    try:
        print(runners[rec.node].read_log(rec, args.lines))
        if args.follow:
            for line in runners[rec.node].follow_log(rec):
                print(line, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        runners.close()
    return 0


def _stop_watcher(pid: int, marker: str, timeout: float = 90.0) -> None:
    """TERM the deployment's watcher (the detached supervisor, or an attached `orchestr launch`)
    and wait for it: it may be mid-restart (backoff, then start) and must record that process
    before we read the state. Only ever a process whose command line has `marker`: a recorded
    pid may have been reused by now."""
    import time

    import psutil

    try:
        proc = psutil.Process(pid)
        if pid == os.getpid() or marker not in " ".join(proc.cmdline()):
            return
        proc.terminate()
        deadline = time.time() + timeout
        while time.time() < deadline and proc.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.2)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return


def stop_main() -> int:
    args = _parser("orchestr stop", "Stop every process of the running deployment, on every node.").parse_args()
    state, path = _load(args.state_file)
    if state is None:
        return _nothing_recorded(path, 0)
    # first the watchers, or they would restart what we stop: mark the record (a watcher leaves
    # when it sees the mark), signal them, wait until they are gone, then read the record again
    state.stopping = True
    state_mod.save(state, state_mod.state_path(args.state_file))
    if state.supervisor_pid:
        _stop_watcher(state.supervisor_pid, "orchestr.launch.supervisor")
    if state.owner_pid:
        _stop_watcher(state.owner_pid, "orchestr")
    if state.supervisor_pid or state.owner_pid:
        state = state_mod.load(state_mod.state_path(args.state_file)) or state
    state.stopping = True
    runners = Runners(state.nodes)
    failures: list[str] = []

    def _event(msg: str) -> None:
        print(msg)
        if msg.startswith("could not stop"):
            failures.append(msg)

    try:
        stop_processes(state, runners, _event)
        still = [p.name for p in state.processes if runners[p.node].alive(p)]
        if still or failures:
            print(f"still running: {', '.join(still)}; state kept in {path}", file=sys.stderr)
            return 1
        state_mod.remove(state_mod.state_path(args.state_file))
        left: list[str] = []  # secret copies a node would not delete: the user must know
        remove_secrets({p.node for p in state.processes}, runners, state_mod.state_path(args.state_file),
                       left.append)
    finally:
        runners.close()
    print("deployment stopped")
    for line in left:
        print(f"{line} (delete it by hand)", file=sys.stderr)
    return 1 if left else 0


def votes_main() -> int:
    p = _parser("orchestr votes", "Gather the conversation and vote logs of every web UI of the running "
                                  "deployment (an SSH node's over SSH) into one folder.")
    p.add_argument("--out", default=None, help="folder to write (default: <state file>.votes/all)")
    args = p.parse_args()
    from pathlib import Path

    from orchestr.launch.context import Context

    state, path = _load(args.state_file)
    if state is None:
        return _nothing_recorded(path, 1)
    ctx = Context(state, state_mod.state_path(args.state_file))
    if not ctx.web_log_folders():
        print("the deployment runs no web UI", file=sys.stderr)
        return 1
    out = ctx.merged_votes(Path(args.out).expanduser() if args.out else ctx.gather_dir() / "all")
    days = sorted(out.glob("*-conv.json"))
    print(f"{len(days)} day file(s) of {len(ctx.web_log_folders())} web UI(s) in {out}")
    return 0
