"""Acceptance: `orchestr launch cluster=ssh_cpu` over a real sshd, two "nodes", the real model.

Both nodes are 127.0.0.1 reached through one throwaway OpenSSH server (tests/ssh_server.py), each
service on its own port: the controller, worker-a and a web UI on node-a, worker-b, the OpenAI API and a second web UI on
node-b. The deployment is detached (its supervisor applies the restart policy) and driven with
the real `orchestr status` / `orchestr stop` through its own state file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.ssh_server import start_sshd

pytestmark = [pytest.mark.slow, pytest.mark.ssh]

ORCHESTR = [sys.executable, "-m", "orchestr"]
MODEL = "smollm2-135m"


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def node_overrides(server, name: str) -> list[str]:
    pre = f"cluster.nodes.{name}"
    return [f"{pre}.ssh_port={server.port}", f"{pre}.user={server.user}", f"{pre}.key_file={server.key_file}",
            f"{pre}.use_agent=false", f"{pre}.known_hosts=strict",
            f"{pre}.known_hosts_file={server.known_hosts}", f"{pre}.python={sys.executable}"]


class Cluster:
    def __init__(self, root, server) -> None:
        self.root = root
        self.server = server
        self.state_file = root / "state.json"
        names = ["controller", "api", "worker-a", "worker-b", "web", "web-b"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.env = {**os.environ, "ORCHESTR_STATE_FILE": str(self.state_file),
                    "ORCHESTR_RUNS_DIR": str(root / "runs")}
        self.controller = f"http://127.0.0.1:{self.ports['controller']}"
        self.api_base = f"http://127.0.0.1:{self.ports['api']}/v1"

    def overrides(self) -> list[str]:
        p = self.ports
        return ["cluster=ssh_cpu", "launch.detach=true", f"launch.state_file={self.state_file}",
                f"launch.log_dir={self.root / 'logs'}", "launch.health_timeout_s=600",
                *node_overrides(self.server, "node-a"), *node_overrides(self.server, "node-b"),
                f"services.controller.port={p['controller']}", f"services.api.port={p['api']}",
                # a web UI on each node, each logging votes in its own folder on its node
                f"services.web.port={p['web']}", f"services.web.log_dir={self.root / 'votes-a'}",
                "+web@services.web.replicas.web-b=replica", "services.web.replicas.web-b.node=node-b",
                f"services.web.replicas.web-b.port={p['web-b']}",
                f"services.web.replicas.web-b.log_dir={self.root / 'votes-b'}",
                f"cluster.workers.worker-a.port={p['worker-a']}", f"cluster.workers.worker-b.port={p['worker-b']}",
                "cluster.workers.worker-b.restart.backoff_s=1",
                "services.worker.heart_beat_interval=5", "services.controller.heart_beat_expiration=20"]

    def orchestr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*ORCHESTR, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def record(self, name: str) -> dict:
        return next(p for p in self.state()["processes"] if p["spec"]["name"] == name)

    def auth(self) -> dict[str, str]:
        """The deployment's service secret, which every internal service now asks for."""
        secret = Path(self.state()["secret_file"]).read_text().strip()
        return {"Authorization": f"Bearer {secret}"}

    def registered(self) -> dict[str, list[str]]:
        st = httpx.post(f"{self.controller}/worker_get_status", timeout=5, trust_env=False,
                        headers=self.auth()).json()
        return {w["worker_name"]: w["model_names"] for w in st["workers"]}

    def logs(self) -> str:
        out = ""
        for f in sorted((self.root / "logs").glob("*.log")):
            out += f"\n--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-25:])
        return out


def live_in_group(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return out


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import importlib.util

    if importlib.util.find_spec("orchestr.services.model_worker") is None:
        pytest.skip("orchestr.services.model_worker is not there yet")
    server = start_sshd()
    c = Cluster(tmp_path_factory.mktemp("multinode"), server)
    pgids: set[int] = set()
    try:
        proc = subprocess.run([*ORCHESTR, "launch", *c.overrides()], env=c.env, capture_output=True, text=True,
                              timeout=1500)
        c.launch_output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            pytest.fail(f"launch failed (rc {proc.returncode}):\n{c.launch_output}\n{c.logs()}\n{server.log()[-2000:]}")
        c.pgids = pgids
        pgids.update(p["pgid"] for p in c.state()["processes"])
        yield c
    finally:
        if c.state_file.exists():
            pgids.update(p["pgid"] for p in c.state()["processes"])
            c.orchestr("stop", timeout=300)
        for g in pgids:  # never leave model processes behind, whatever the test found
            for pid in live_in_group(g):
                os.kill(pid, signal.SIGKILL)
        server.stop()


def test_every_process_runs_on_its_node_over_ssh(cluster) -> None:
    st = cluster.state()
    where = {p["spec"]["name"]: p["spec"]["node"] for p in st["processes"]}
    assert where == {"controller": "node-a", "worker-a": "node-a", "worker-b": "node-b", "api": "node-b",
                     "web": "node-a", "web-b": "node-b"}
    assert {st["nodes"][n]["transport"] for n in where.values()} == {"ssh"}
    for p in st["processes"]:
        # started by sshd, detached: session leaders whose parent is not this test or the launcher
        assert os.getsid(p["pid"]) == p["pid"] == p["pgid"]
        assert psutil.Process(p["pid"]).ppid() != os.getpid()
        assert p["log_path"].startswith(str(cluster.root / "logs"))
    assert "sshd" in cluster.server.log() and "Accepted publickey" in cluster.server.log()


def test_all_workers_register_with_the_controller(cluster) -> None:
    reg = cluster.registered()
    for w in ("worker-a", "worker-b"):
        assert reg.get(f"http://127.0.0.1:{cluster.ports[w]}") == [MODEL]


def test_openai_endpoint_answers_through_the_workers(cluster) -> None:
    client = openai.OpenAI(base_url=cluster.api_base, api_key="EMPTY")
    assert MODEL in {m.id for m in client.models.list().data}
    for _ in range(2):
        out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                             max_tokens=12, temperature=0)
        assert out.choices[0].message.content.strip()
        assert out.usage.completion_tokens > 0
    # each worker answers on its own, so whichever the controller picks can serve
    for w in ("worker-a", "worker-b"):
        r = httpx.post(f"http://127.0.0.1:{cluster.ports[w]}/worker_generate", timeout=120, trust_env=False,
                       headers=cluster.auth(), json={"model": MODEL, "prompt": "Hello", "max_new_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text


def test_the_service_secret_reaches_each_node_as_a_private_file(cluster) -> None:
    secret = cluster.auth()["Authorization"].split()[1]
    assert httpx.post(f"{cluster.controller}/list_models", timeout=5, trust_env=False).status_code == 401
    for name in ("worker-a", "worker-b", "api", "controller"):
        proc = psutil.Process(cluster.record(name)["pid"])
        assert secret not in " ".join(proc.cmdline())
        placed = Path(proc.environ()["ORCHESTR_SECRET_FILE"])  # copied over SSH, not the launcher's file
        assert placed != Path(cluster.state()["secret_file"]) and "/.cache/orchestr/secrets/" in str(placed)
        assert placed.read_text().strip() == secret
        assert placed.stat().st_mode & 0o077 == 0 and placed.parent.stat().st_mode & 0o077 == 0


def test_status_shows_them(cluster) -> None:
    out = cluster.orchestr("status")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 5}
    for name, node in (("controller", "node-a"), ("worker-a", "node-a"), ("worker-b", "node-b"), ("api", "node-b")):
        assert node in rows[name] and " running " in rows[name], out.stdout
    for w in ("worker-a", "worker-b"):
        cells = [c.strip() for c in rows[w].split("│")]
        assert cells[5:7] == ["running", "yes"] and cells[7] == MODEL, rows[w]  # state, registered, models


def test_logs_come_from_the_node(cluster) -> None:
    out = cluster.orchestr("logs", "worker-b", "-n", "200")
    assert out.returncode == 0
    assert "start:" in out.stdout and "orchestr.services.model_worker" in out.stdout


def _named_votes(web_url: str, n: int) -> None:
    """Side-by-side battles through the web UI's HTTP backend (both workers serve one model)."""
    from gradio_client import Client

    for i in range(n):
        client = Client(web_url, verbose=False)
        client.predict(MODEL, MODEL, f"Count to {i + 2}.", 0.7, 1.0, 8, api_name="/on_send_2")
        assert "Thanks for voting" in client.predict(api_name="/handler_4")[0]
        client.close()


def test_clean_counts_the_votes_of_the_web_uis_on_both_nodes(cluster, tmp_path) -> None:
    web, web_b = (cluster.record(n) for n in ("web", "web-b"))
    assert (web["spec"]["node"], web_b["spec"]["node"]) == ("node-a", "node-b")
    _named_votes(f"http://127.0.0.1:{cluster.ports['web']}", 2)
    _named_votes(f"http://127.0.0.1:{cluster.ports['web-b']}", 1)
    assert list((cluster.root / "votes-a").glob("*-conv.json")) and list((cluster.root / "votes-b").glob("*-conv.json"))
    out = cluster.orchestr("clean", "step=battles", f"clean.output_dir={tmp_path}", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "using the running deployment" in out.stderr and "web UI logs" in out.stderr, out.stderr
    battles = json.loads((tmp_path / "clean_battle.json").read_text())
    assert len(battles) == 3, out.stdout  # 2 cast on node-a's UI + 1 on node-b's, read over SSH
    assert "read 3," in out.stdout
    # the same, gathered into one folder by hand
    got = cluster.orchestr("votes", "--out", str(tmp_path / "all"))
    assert got.returncode == 0 and "2 web UI(s)" in got.stdout, got.stdout + got.stderr
    lines = [json.loads(x) for f in (tmp_path / "all").glob("*-conv.json") for x in f.read_text().splitlines()]
    assert sum(x["type"] == "leftvote" for x in lines) == 3


def test_a_killed_worker_is_restarted(cluster) -> None:
    old = cluster.record("worker-b")
    os.kill(old["pid"], signal.SIGKILL)
    deadline = time.time() + 600
    new = old
    while time.time() < deadline:
        new = cluster.record("worker-b")
        if new["pid"] != old["pid"] and psutil.pid_exists(new["pid"]):
            break
        time.sleep(1)
    assert new["pid"] != old["pid"], cluster.logs()
    assert new["restarts"] == 1
    cluster.pgids.add(new["pgid"])
    assert os.getsid(new["pid"]) == new["pid"]
    addr = f"http://127.0.0.1:{cluster.ports['worker-b']}"
    # the controller may still list the dead one until its heartbeat expires: wait for the new
    # process to answer, then for it to be registered
    answered = False
    while time.time() < deadline and not answered:
        try:
            r = httpx.post(f"{addr}/worker_generate", timeout=120, trust_env=False, headers=cluster.auth(),
                           json={"model": MODEL, "prompt": "Hello", "max_new_tokens": 4, "temperature": 0})
            answered = r.status_code == 200
        except httpx.HTTPError:
            time.sleep(1)
    assert answered, cluster.logs()
    assert psutil.Process(new["pid"]).is_running()
    while time.time() < deadline and cluster.registered().get(addr) != [MODEL]:
        time.sleep(1)
    assert cluster.registered().get(addr) == [MODEL], cluster.logs()
    out = cluster.orchestr("status")
    assert out.returncode == 0, out.stdout


def test_stop_leaves_nothing_on_any_node(cluster) -> None:
    st = cluster.state()
    supervisor = st["supervisor_pid"]
    pgids = set(cluster.pgids) | {p["pgid"] for p in st["processes"]}
    # the secret copies the launch placed on the nodes (~/.cache/orchestr/secrets/...)
    placed = {Path(psutil.Process(p["pid"]).environ()["ORCHESTR_SECRET_FILE"]) for p in st["processes"]}
    assert placed and all(f.is_file() for f in placed)
    out = cluster.orchestr("stop", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deployment stopped" in out.stdout
    assert not cluster.state_file.exists()
    assert not any(f.exists() or f.parent.exists() for f in placed)  # no secret left on a node
    for g in pgids:
        assert live_in_group(g) == [], g
    time.sleep(1)
    assert supervisor is None or not psutil.pid_exists(supervisor) or \
        psutil.Process(supervisor).status() == psutil.STATUS_ZOMBIE
    for port in cluster.ports.values():
        assert processes_mentioning(f"--port {port}") == []
    assert processes_mentioning(str(cluster.state_file)) == []
