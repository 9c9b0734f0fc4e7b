"""`launch.backend=ray` on the real two-node local Ray cluster of scripts/setup_ray.sh: each
service a detached actor, workers placed on the node their YAML names (checked through Ray's
state API), kill -9 of a worker actor's process answered by Ray's restart, stop leaves no
actor. One deployment for the module (file order; the last tests kill and stop)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import ORCHESTR, REPO, free_ports

pytestmark = [pytest.mark.slow, pytest.mark.ray]

RAY_ADDRESS = f"127.0.0.1:{os.environ.get('ORCHESTR_RAY_PORT', '6379')}"


def setup_ray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "setup_ray.sh"), *args], capture_output=True,
                          text=True, timeout=600)


def ray_up() -> str | None:
    r = setup_ray()
    return None if r.returncode == 0 else f"setup_ray.sh failed: {(r.stdout + r.stderr)[-800:]}"


def actors(namespace: str, state: str | None = None) -> list:
    from ray.util.state import list_actors

    filters = [("ray_namespace", "=", namespace)] + ([("state", "=", state)] if state else [])
    return list_actors(address=RAY_ADDRESS, filters=filters, detail=True, raise_on_missing_output=False)


def live_actor(namespace: str, name: str):
    (a,) = [a for a in actors(namespace, "ALIVE") if a.name == name]
    return a


@dataclass
class RayDeployment:
    root: Path
    namespace: str
    ports: dict[str, int]

    def orchestr(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        env = {**os.environ, "ORCHESTR_STATE_FILE": str(self.root / "state.json")}
        return subprocess.run([*ORCHESTR, *args], env=env, capture_output=True, text=True, timeout=timeout)

    def ask(self) -> str:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.ports['api']}/v1", api_key="EMPTY",
                               timeout=60, max_retries=0)
        r = client.chat.completions.create(model="smollm2-135m", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Say hello."}])
        return r.choices[0].message.content


@pytest.fixture(scope="module")
def ray_dep(tmp_path_factory) -> RayDeployment:
    started_here = setup_ray("--check").returncode != 0
    why = ray_up()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("ray")
    namespace = f"orchtest-{uuid.uuid4().hex[:6]}"
    ports = dict(zip(["controller", "api", "worker-0", "worker-1"], free_ports(4), strict=True))
    cmd = [*ORCHESTR, "launch", "cluster=ray_local", "launch.backend=ray", "launch.detach=true",
           f"launch.ray.address={RAY_ADDRESS}", f"launch.ray.namespace={namespace}",
           f"launch.state_file={root / 'state.json'}", f"launch.log_dir={root / 'logs'}",
           "launch.health_timeout_s=300", "services.web.enabled=false",
           "services.controller.host=127.0.0.1", "services.api.host=127.0.0.1", "services.worker.host=127.0.0.1",
           f"services.controller.port={ports['controller']}", f"services.api.port={ports['api']}",
           f"cluster.workers.worker-0.port={ports['worker-0']}", f"cluster.workers.worker-1.port={ports['worker-1']}",
           "services.worker.heart_beat_interval=5", "services.controller.heart_beat_expiration=20"]
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(root / "runs")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    dep = RayDeployment(root=root, namespace=namespace, ports=ports)
    if proc.returncode != 0:
        dep.orchestr("stop")
        pytest.fail(f"launch on ray failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    yield dep
    dep.orchestr("stop")
    if started_here:  # a cluster that was up before the tests stays up
        setup_ray("--stop")


def test_each_worker_runs_on_the_ray_node_its_yaml_names(ray_dep) -> None:
    from ray.util.state import list_nodes

    nodes = {n.node_id: n.resources_total for n in list_nodes(address=RAY_ADDRESS, detail=True)}
    placed = {a.name: nodes[a.node_id] for a in actors(ray_dep.namespace, "ALIVE")}
    assert set(placed) == {"controller", "worker-0", "worker-1", "api"}
    assert "ray-head" in placed["worker-0"] and "ray-node-1" not in placed["worker-0"]
    assert "ray-node-1" in placed["worker-1"] and "ray-head" not in placed["worker-1"]
    assert "ray-head" in placed["controller"] and "ray-head" in placed["api"]


def test_serves_through_the_api_and_status_comes_from_ray(ray_dep) -> None:
    assert ray_dep.ask().strip()
    out = ray_dep.orchestr("status")
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("controller", "worker-0", "worker-1", "api"):
        line = next(ln for ln in out.stdout.splitlines() if f" {name} " in ln)
        assert " running " in line


def test_the_service_secret_reaches_the_actors_but_not_ray_views_or_argv(ray_dep) -> None:
    secret = (ray_dep.root / "state.secrets" / "service_secret").read_text().strip()
    assert len(secret) > 16
    for a in actors(ray_dep.namespace, "ALIVE"):
        assert secret not in str(a.serialized_runtime_env)
    listed = subprocess.run([str(Path(ORCHESTR[0]).parent / "ray"), "list", "actors", "--detail",
                             "--address", RAY_ADDRESS], capture_output=True, text=True, timeout=120).stdout
    assert "ServiceActor" in listed and secret not in listed
    for p in psutil.process_iter(["cmdline"]):
        assert secret not in " ".join(p.info["cmdline"] or [])
    # the controller demands it: without it 401, with it the workers registered through it
    url = f"http://127.0.0.1:{ray_dep.ports['controller']}/list_models"
    assert httpx.post(url, trust_env=False).status_code == 401
    r = httpx.post(url, headers={"Authorization": f"Bearer {secret}"}, trust_env=False)
    assert r.status_code == 200 and "smollm2-135m" in r.text


def test_a_plan_ray_cannot_place_fails_fast_naming_the_resource(ray_dep, tmp_path) -> None:
    """The default cluster's node `local` is no resource of setup_ray.sh's nodes: exit 2 at once
    (no actor pending forever), nothing left in the namespace; a launch on the names of a running
    deployment's actors is refused the same way (no ActorAlreadyExistsError)."""
    namespace = f"orchtest-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs"), "ORCHESTR_STATE_FILE": str(tmp_path / "s.json")}
    base = [*ORCHESTR, "launch", "launch.backend=ray", f"launch.ray.address={RAY_ADDRESS}",
            "services.web.enabled=false", *(f"services.{s}.port={p}" for s, p in zip(("controller", "api"), free_ports(2), strict=True))]
    t0 = time.time()
    out = subprocess.run([*base, f"launch.ray.namespace={namespace}"], env=env, capture_output=True, text=True,
                         timeout=120)
    took = time.time() - t0
    assert out.returncode == 2 and took < 30, (took, out.stdout + out.stderr)
    msg = out.stderr.strip().splitlines()
    assert len(msg) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "no Ray node offers resource 'local'" in msg[0] and "'ray-head'" in msg[0] and "cluster=ray_local" in msg[0]
    assert "launch.ray.node_resource" in msg[0]
    assert actors(namespace) == []
    # the running deployment's names in its namespace: refused before anything is created
    taken = subprocess.run([*base, "cluster=ray_local", f"launch.ray.namespace={ray_dep.namespace}",
                            *(f"cluster.workers.worker-{i}.port={p}" for i, p in enumerate(free_ports(2)))],
                           env=env, capture_output=True, text=True, timeout=120)
    assert taken.returncode == 2, taken.stdout + taken.stderr
    assert "already in Ray namespace" in taken.stderr and "ActorAlreadyExists" not in taken.stderr
    assert {a.name for a in actors(ray_dep.namespace, "ALIVE")} == {"controller", "worker-0", "worker-1", "api"}


def test_logs_come_through_ray(ray_dep) -> None:
    out = ray_dep.orchestr("logs", "worker-1", "-n", "300")
    assert out.returncode == 0
    assert "=== start:" in out.stdout and "orchestr.services.model_worker" in out.stdout
    assert "registered" in out.stdout


def test_kill_9_of_a_worker_actor_process_is_restarted_by_ray(ray_dep) -> None:
    before = live_actor(ray_dep.namespace, "worker-1")
    psutil.Process(before.pid).send_signal(signal.SIGKILL)
    port = ray_dep.ports["worker-1"]
    deadline = time.time() + 240
    after = None
    while time.time() < deadline:
        try:
            a = live_actor(ray_dep.namespace, "worker-1")
            h = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).json()
            if a.pid != before.pid and h.get("registered"):
                after = a
                break
        except (ValueError, httpx.HTTPError):
            pass
        time.sleep(2)
    assert after is not None, "worker-1 did not come back"
    assert after.num_restarts == 1 and after.actor_id == before.actor_id  # Ray's restart, same actor
    deadline = time.time() + 60
    while True:
        try:
            assert ray_dep.ask().strip()
            break
        except openai.APIError:
            if time.time() > deadline:
                raise
            time.sleep(2)


def test_stop_leaves_no_actor_and_no_process(ray_dep) -> None:
    out = ray_dep.orchestr("stop")
    assert out.returncode == 0, out.stdout + out.stderr
    assert [a.name for a in actors(ray_dep.namespace) if a.state != "DEAD"] == []
    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if "orchestr.services" in " ".join(p.info["cmdline"] or [])
            and any(f"--port {port}" in " ".join(p.info["cmdline"] or []) for port in ray_dep.ports.values())]
    assert left == []
