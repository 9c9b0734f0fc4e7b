"""One owner per deployment (issue 28): `orchestr stop` from another terminal ends an attached
`orchestr launch` (it leaves at once, restarts nothing, and nothing is left), and a second launch
on the recorded deployment is refused with one line naming `orchestr stop` / `launch.state_file`.
A real attached launch of a controller and one worker (the embedded model)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ORCHESTR, REPO, free_ports, log_tails

pytestmark = [pytest.mark.slow]


def _mentioning(root: Path) -> list[int]:
    pids = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if str(root) in cmd and "pytest" not in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
                pids.append(p.info["pid"])
        except psutil.NoSuchProcess:
            continue
    return pids


def test_stop_from_another_terminal_ends_an_attached_launch(tmp_path: Path) -> None:
    ctrl, worker = free_ports(2)
    state = tmp_path / "state.json"
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs"), "ORCHESTR_STATE_FILE": str(state),
           "PYTHONPATH": str(REPO)}
    out_path = tmp_path / "launcher.out"
    with open(out_path, "wb") as out:
        launcher = subprocess.Popen(
            [*ORCHESTR, "launch", "services.web.enabled=false", "services.api.enabled=false",
             f"launch.log_dir={tmp_path / 'logs'}", f"services.controller.port={ctrl}",
             f"cluster.workers.worker-0.port={worker}", "cluster.workers.worker-0.restart.backoff_s=0.2"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 900
        while "running; Ctrl-C stops everything" not in out_path.read_text(errors="replace"):
            if launcher.poll() is not None or time.time() > deadline:
                pytest.fail(f"the launch did not come up:\n{out_path.read_text()}{log_tails(tmp_path / 'logs')}")
            time.sleep(0.5)
        recorded = json.loads(state.read_text())
        assert recorded["owner_pid"] == launcher.pid and recorded["owner"]
        pids = [p["pid"] for p in recorded["processes"]]

        # a second launch on the recorded, running deployment: one line, exit 2
        second = subprocess.run([*ORCHESTR, "launch", "services.web.enabled=false"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
        assert "orchestr stop" in second.stderr and "launch.state_file" in second.stderr

        t0 = time.time()
        stop = subprocess.Popen([*ORCHESTR, "stop"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        launcher.wait(timeout=60)
        took = time.time() - t0
        stop_out = stop.communicate(timeout=180)[0]
        assert stop.returncode == 0, stop_out
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        subprocess.run([*ORCHESTR, "stop"], env=env, capture_output=True, timeout=180)
    said = out_path.read_text(errors="replace")
    print(f"the attached launcher exited {took:.1f}s after `orchestr stop` started")
    assert launcher.returncode == 0 and took < 10, said
    after = said.split("running; Ctrl-C stops everything", 1)[1]
    assert "no longer this launcher's" in after and "restart" not in after, after
    assert "deployment stopped" in stop_out and not state.exists()
    time.sleep(3)  # time for anything that would restart a service to do so
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert _mentioning(tmp_path) == []
