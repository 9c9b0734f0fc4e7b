"""Restart policies on real local processes killed with SIGKILL (no model: a sleeping Python).

The budget counts failures within `restart.window_s`: a process that stays up that long earns
it back; one that keeps dying inside the window is left down and says why.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from orchestr.config.serving import NodeConfig, RestartPolicy
from orchestr.launch import state as state_mod
from orchestr.launch.deploy import Deployment
from orchestr.launch.spec import ProcessSpec


def sleeper(policy: RestartPolicy) -> ProcessSpec:
    code = "import time; print('up', flush=True); time.sleep(600)"
    return ProcessSpec(name="sleeper", service="test", node="local", argv=[sys.executable, "-c", code],
                       restart=policy, key="cluster.workers.sleeper")


def deployment(tmp_path: Path, policy: RestartPolicy) -> Deployment:
    return Deployment([sleeper(policy)], {"local": NodeConfig()}, run_dir=tmp_path, log_dir=str(tmp_path / "logs"),
                      controller="http://127.0.0.1:9", api=None, web=None, state_file=tmp_path / "state.json",
                      health_timeout_s=30)


def kill_and_watch(dep: Deployment, events: list[str], passes: int = 30) -> bool:
    """SIGKILL the process group, then watch until it is restarted (True) or left down (False)."""
    old = dep.state.record("sleeper")
    os.killpg(old.pgid, signal.SIGKILL)
    for _ in range(passes):
        dep.watch_once(events.append)
        if dep.state.record("sleeper").pid != old.pid:
            return True
        time.sleep(0.1)
    return False


def test_budget_counts_failures_in_the_window_and_comes_back_after_uptime(tmp_path: Path) -> None:
    policy = RestartPolicy(policy="on-failure", max_restarts=1, window_s=3.0, backoff_s=0.1, backoff_max_s=0.2)
    dep = deployment(tmp_path, policy)
    events: list[str] = []
    dep.start_all(events.append)
    try:
        assert kill_and_watch(dep, events)  # failure 1 of 1 allowed in the window
        rec = dep.state.record("sleeper")
        assert rec.restarts == 1 and len(rec.failures) == 1
        assert rec.last_exit and "found dead" in rec.last_exit and "last log line: up" in rec.last_exit
        time.sleep(3.5)  # healthy for longer than the window: the budget is back
        assert kill_and_watch(dep, events)
        rec = dep.state.record("sleeper")
        assert rec.restarts == 2 and len(rec.failures) == 1
        assert not kill_and_watch(dep, events, passes=15)  # a second failure inside the window: down
        assert any("sleeper is down" in e and "1 allowed" in e for e in events), events
        saved = state_mod.load(tmp_path / "state.json").record("sleeper")
        assert len(saved.failures) == 2 and "found dead" in saved.last_exit
    finally:
        dep.stop_all(events.append)


def test_policy_no_never_restarts(tmp_path: Path) -> None:
    dep = deployment(tmp_path, RestartPolicy(policy="no"))
    events: list[str] = []
    dep.start_all(events.append)
    try:
        assert not kill_and_watch(dep, events, passes=5)
        assert any("sleeper is down" in e and "policy no" in e for e in events), events
    finally:
        dep.stop_all(events.append)
