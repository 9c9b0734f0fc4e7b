"""Shared fixtures: one real deployment per test session, free ports, paths to shared test data.

The `deployment` fixture runs the real `orchestr launch` (detached) on the embedded model with
two workers (fp32 and int8) and tears it down with the real `orchestr stop`; every end-to-end
test that only needs *a* deployment shares it, so the model is loaded once per run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ORCHESTR = [sys.executable, "-m", "orchestr"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "fastchat").is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    d = REPO / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d


@dataclass
class Deployment:
    root: Path
    state_file: Path
    controller_url: str
    api_base: str
    web_url: str
    web_log_dir: Path
    log_dir: Path
    ports: dict[str, int]
    model_names: list[str] = field(default_factory=lambda: ["smollm2-135m", "smollm2-135m-int8"])
    launch_output: str = ""

    def secret_env(self) -> dict[str, str]:
        """The environment a client of the internal services needs: the deployment's secret file."""
        secret_file = json.loads(self.state_file.read_text())["secret_file"]
        return {**os.environ, "ORCHESTR_SECRET_FILE": secret_file}

    def orchestr(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, "ORCHESTR_STATE_FILE": str(self.state_file)}
        return subprocess.run([*ORCHESTR, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=check)


def launch_overrides(root: Path, ports: dict[str, int]) -> list[str]:
    return [
        "cluster=local_arena",
        "launch.detach=true",
        f"launch.state_file={root / 'state.json'}",
        f"launch.log_dir={root / 'logs'}",
        f"services.controller.port={ports['controller']}",
        f"services.api.port={ports['api']}",
        f"services.web.port={ports['web']}",
        f"services.web.log_dir={root / 'web-logs'}",
        f"cluster.workers.worker-0.port={ports['worker-0']}",
        f"cluster.workers.worker-1.port={ports['worker-1']}",
        # short heartbeats so the controller notices dead workers within a test's patience
        "services.worker.heart_beat_interval=5",
        "services.controller.heart_beat_expiration=20",
    ]


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    root = tmp_path_factory.mktemp("deployment")
    names = ["controller", "api", "web", "worker-0", "worker-1"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(root / "runs")}
    cmd = [*ORCHESTR, "launch", *launch_overrides(root, ports)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    dep = Deployment(root=root, state_file=root / "state.json",
                     controller_url=f"http://127.0.0.1:{ports['controller']}",
                     api_base=f"http://127.0.0.1:{ports['api']}/v1",
                     web_url=f"http://127.0.0.1:{ports['web']}",
                     web_log_dir=root / "web-logs", log_dir=root / "logs", ports=ports,
                     launch_output=proc.stdout + proc.stderr)
    if proc.returncode != 0:
        logs = ""
        for f in sorted((root / "logs").glob("*.log")):
            logs += f"\n--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:])
        dep.orchestr("stop")
        pytest.fail(f"orchestr launch failed (rc={proc.returncode}):\n{dep.launch_output}\n{logs}")
    yield dep
    out = dep.orchestr("stop", timeout=180)
    if out.returncode != 0:
        print(out.stdout, out.stderr)


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
