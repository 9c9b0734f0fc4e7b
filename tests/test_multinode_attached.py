"""An attached `orchestr launch` over SSH: it watches, restarts a killed remote worker, and
Ctrl-C stops every remote process group (the real model, a real loopback sshd)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.ssh_server import start_sshd
from tests.test_multinode_e2e import ORCHESTR, free_ports, live_in_group, node_overrides

pytestmark = [pytest.mark.slow, pytest.mark.ssh]


def wait_for(pred, timeout: float, what: str, diag=lambda: "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{diag()}")


def test_attached_launch_restarts_a_remote_worker_and_ctrl_c_stops_all(tmp_path) -> None:
    import importlib.util

    if importlib.util.find_spec("orchestr.services.model_worker") is None:
        pytest.skip("orchestr.services.model_worker is not there yet")
    server = start_sshd()
    state_file = tmp_path / "state.json"
    ctl, api, wa = free_ports(3)
    out_path = tmp_path / "launch.out"
    cmd = [*ORCHESTR, "launch", "cluster=ssh_cpu", "~cluster.workers.worker-b", f"launch.state_file={state_file}",
           f"launch.log_dir={tmp_path / 'logs'}", *node_overrides(server, "node-a"), *node_overrides(server, "node-b"),
           f"services.controller.port={ctl}", f"services.api.port={api}", "services.web.enabled=false",
           f"cluster.workers.worker-a.port={wa}", "cluster.workers.worker-a.restart.backoff_s=1"]
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")}
    pgids: set[int] = set()
    with open(out_path, "w") as out:
        launcher = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    output = out_path.read_text
    try:
        wait_for(lambda: "running; Ctrl-C stops everything" in output() or launcher.poll() is not None,
                 900, "the launch", output)
        assert launcher.poll() is None, output()
        state = json.loads(state_file.read_text())
        pgids |= {p["pgid"] for p in state["processes"]}
        old = next(p for p in state["processes"] if p["spec"]["name"] == "worker-a")
        assert old["spec"]["node"] == "node-a"
        os.kill(old["pid"], signal.SIGKILL)

        def restarted() -> bool:
            rec = next(p for p in json.loads(state_file.read_text())["processes"] if p["spec"]["name"] == "worker-a")
            if rec["pid"] != old["pid"]:
                pgids.add(rec["pgid"])
                return True
            return False

        wait_for(restarted, 120, "the restart", output)
        assert "worker-a died (found dead" in output() and "restarted worker-a on node-a" in output()
        new = next(p for p in json.loads(state_file.read_text())["processes"] if p["spec"]["name"] == "worker-a")
        assert new["restarts"] == 1 and live_in_group(new["pgid"])
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(300) == 0, output()
        assert "stopped worker-a on node-a" in output()
        assert not state_file.exists()
        for g in pgids:
            assert live_in_group(g) == [], g
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(120)
            except subprocess.TimeoutExpired:
                launcher.kill()
        for g in pgids:
            for pid in live_in_group(g):
                os.kill(pid, signal.SIGKILL)
        server.stop()
        print(output() if out_path.exists() else "", file=sys.stderr)
