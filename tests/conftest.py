"""Shared fixtures: one real deployment per test session, free ports, paths to shared test data.

The `deployment` fixture runs the real `orchestr launch` (detached) on the embedded model with
two workers (fp32 and int8) and tears it down with the real `orchestr stop`; every end-to-end
test that only needs *a* deployment shares it, so the model is loaded once per run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


def wait_healthy(url: str, proc: subprocess.Popen, log: Path | None = None, timeout: float = 300) -> None:
    """Poll ``url`` until it answers 200; fail (with the tail of ``proc``'s log, if it writes one)
    when ``proc`` exits or time runs out."""
    tail = (lambda: "\n" + log.read_text(errors="replace")[-3000:]) if log else (lambda: "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}{tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy{tail()}")


def log_tails(log_dir: Path, chars: int = 3000) -> str:
    """The end of each service log of a deployment, for a failed launch's report."""
    return "".join(f"\n--- {f.name}\n{f.read_text(errors='replace')[-chars:]}" for f in sorted(log_dir.glob("*.log")))


def terminate(procs: Iterable[subprocess.Popen], timeout: float = 15) -> None:
    """Stop processes this test started: SIGTERM to all at once (they shut down in parallel),
    then SIGKILL any that has not exited within ``timeout`` seconds."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextmanager
def one_model_deployment(root: Path, *overrides: str) -> Iterator[dict]:
    """The real `orchestr launch` (detached) of a controller, the API and one worker (no web UI),
    with `overrides` choosing the model and cluster; yields the addresses, `root` and the `auth`
    header the internal services want, then runs the real `orchestr stop`."""
    ctl, api, worker = free_ports(3)
    state = root / "state.json"
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(root / "runs"), "ORCHESTR_STATE_FILE": str(state)}
    cmd = [*ORCHESTR, "launch", *overrides, "services.web.enabled=false",
           "launch.detach=true", f"launch.state_file={state}", f"launch.log_dir={root / 'logs'}",
           f"services.controller.port={ctl}", f"services.api.port={api}",
           f"cluster.workers.worker-0.port={worker}", "services.worker.heart_beat_interval=5"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=REPO)
    try:
        if proc.returncode != 0:
            pytest.fail(f"launch failed:\n{proc.stdout}{proc.stderr}{log_tails(root / 'logs')}")
        secret = Path(json.loads(state.read_text())["secret_file"]).read_text().strip()
        yield {"api_base": f"http://127.0.0.1:{api}/v1", "controller": f"http://127.0.0.1:{ctl}",
               "worker": f"http://127.0.0.1:{worker}", "root": root,
               "auth": {"Authorization": f"Bearer {secret}"}}  # internal hops need it
    finally:
        subprocess.run([*ORCHESTR, "stop"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


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
        dep.orchestr("stop")
        pytest.fail(f"orchestr launch failed (rc={proc.returncode}):\n{dep.launch_output}\n{log_tails(root / 'logs')}")
    yield dep
    out = dep.orchestr("stop", timeout=180)
    if out.returncode != 0:
        print(out.stdout, out.stderr)


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
