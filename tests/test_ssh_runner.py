"""SSHRunner against a real OpenSSH server on loopback, with real remote processes.

Remote "services" here are `python -m http.server` and small `python -c` scripts, so these tests
run in seconds; tests/test_multinode_e2e.py runs the real model workers over the same path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest

from orchestr.config.serving import NodeConfig, RestartPolicy
from orchestr.errors import LaunchError
from orchestr.launch import state as state_mod
from orchestr.launch.backends import runner_for
from orchestr.launch.deploy import Deployment
from orchestr.launch.spec import ProcessRecord, ProcessSpec
from orchestr.launch.ssh import SSHError, SSHRunner
from tests.conftest import free_port
from tests.ssh_server import drop_sandbox_user, sandbox_user, start_sshd, world_readable_tmpdir

pytestmark = pytest.mark.ssh

PY = sys.executable
ORCHESTR = [sys.executable, "-m", "orchestr"]


@pytest.fixture(scope="module")
def sshd():
    server = start_sshd()
    yield server
    server.stop()


@pytest.fixture
def node(sshd) -> NodeConfig:
    return NodeConfig(**sshd.node(python=PY))


@pytest.fixture
def runner(node):
    r = SSHRunner("node-a", node)
    yield r
    r.close()


def http_server_spec(name: str, port: int, node: str = "node-a", **kw) -> ProcessSpec:
    return ProcessSpec(name=name, service="http", node=node,
                       argv=[PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"], port=port,
                       health_url=f"http://127.0.0.1:{port}/", **kw)


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def live_group(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return out


# ---------------------------------------------------------------- connection and host keys
def test_runner_for_picks_ssh_for_ssh_nodes(node) -> None:
    r = runner_for("node-a", node)
    try:
        assert isinstance(r, SSHRunner)
        assert r.run("echo hi")[1] == "hi\n"
    finally:
        r.close()


def test_strict_refuses_an_unknown_host(sshd, tmp_path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SSHError) as e:
        SSHRunner("node-a", NodeConfig(**sshd.node(known_hosts_file=str(empty))))
    msg = str(e.value)
    assert "cluster.nodes.node-a" in msg and "known_hosts" in msg and "accept-new" in msg
    assert "cluster.nodes.node-a.known_hosts_file" in msg and str(empty) in msg  # where to add it


def test_strict_is_the_default_policy() -> None:
    assert NodeConfig().known_hosts == "strict"


def test_accept_new_learns_the_key_then_checks_it(sshd, tmp_path) -> None:
    learned = tmp_path / "known_hosts"
    r = SSHRunner("node-a", NodeConfig(**sshd.node(known_hosts="accept-new", known_hosts_file=str(learned))))
    r.close()
    assert sshd.host_key_line.split()[1] in learned.read_text()
    # the learned key is now enforced: a strict connection with that file succeeds
    SSHRunner("node-a", NodeConfig(**sshd.node(known_hosts_file=str(learned)))).close()


def test_a_changed_host_key_is_refused_unless_ignored(sshd, tmp_path) -> None:
    other = tmp_path / "other_host"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts"
    key_type, b64 = Path(f"{other}.pub").read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {b64}\n")
    for policy in ("strict", "accept-new"):
        with pytest.raises(SSHError, match="does not match"):
            SSHRunner("node-a", NodeConfig(**sshd.node(known_hosts=policy, known_hosts_file=str(wrong))))
    # the explicit opt-out connects and writes nothing
    before = wrong.read_text()
    SSHRunner("node-a", NodeConfig(**sshd.node(known_hosts="ignore", known_hosts_file=str(wrong)))).close()
    assert wrong.read_text() == before


def test_an_unauthorised_key_is_refused(sshd) -> None:
    with pytest.raises(SSHError, match="cluster.nodes.node-a: cannot connect") as e:
        SSHRunner("node-a", NodeConfig(**sshd.node(key_file=str(sshd.other_key_file))))
    # the next step: which user and key were tried, and the keys to change
    msg = str(e.value)
    assert f"user {sshd.user}" in msg and str(sshd.other_key_file) in msg
    assert "cluster.nodes.node-a.user" in msg and "cluster.nodes.node-a.key_file" in msg


def test_launch_checks_every_node_before_starting_anything(sshd, tmp_path) -> None:
    """node-b refuses the key: `orchestr launch` exits 2 with one line naming node-b's keys, and
    node-a (reachable) got nothing started."""
    ctl = free_port()
    node = {"node-a": sshd.node(python=PY), "node-b": sshd.node(python=PY, key_file=str(sshd.other_key_file))}
    over = [f"cluster.nodes.{n}.{k}={v}" for n, d in node.items() for k, v in d.items()
            if k in ("ssh_port", "user", "key_file", "use_agent", "known_hosts_file", "python")]
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs"), "ORCHESTR_STATE_FILE": str(tmp_path / "s.json")}
    out = subprocess.run([*ORCHESTR, "launch", "cluster=ssh_cpu", "services.web.enabled=false",
                          f"services.controller.port={ctl}", *over], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cluster.nodes.node-b" in lines[0] and "key_file" in lines[0], out.stderr
    assert "starting" not in out.stdout and not (tmp_path / "s.json").exists()
    with pytest.raises(httpx.HTTPError):  # no controller was started on node-a
        httpx.get(f"http://127.0.0.1:{ctl}/health", timeout=2)


def test_a_node_python_without_orchestr_says_to_set_the_nodes_python(sshd, tmp_path) -> None:
    # the node's default `python3` has no orchestr: launch says which key to set
    node = NodeConfig(**sshd.node(python="/usr/bin/python3"))
    spec = ProcessSpec(name="w", service="model_worker", node="node-a", port=free_port(),
                       argv=["/usr/bin/python3", "-m", "orchestr.services.model_worker"])
    dep = Deployment([spec], {"node-a": node}, run_dir=tmp_path, log_dir=str(tmp_path / "logs"),
                     controller="http://127.0.0.1:9", api=None, web=None, state_file=tmp_path / "s.json",
                     health_timeout_s=30)
    with pytest.raises(LaunchError) as e:
        dep.start_all(lambda _: None)
    first = str(e.value).splitlines()[0]
    assert "No module named" in str(e.value) and "cluster.nodes.node-a.python" in first, str(e.value)


def test_agent_authentication(sshd, tmp_path) -> None:
    # a real ssh-agent holding the key; the node names no key file
    out = subprocess.run(["ssh-agent", "-s", "-a", str(tmp_path / "agent.sock")], capture_output=True,
                         text=True, check=True).stdout
    agent_pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])
    old = os.environ.get("SSH_AUTH_SOCK")
    try:
        os.environ["SSH_AUTH_SOCK"] = str(tmp_path / "agent.sock")
        subprocess.run(["ssh-add", str(sshd.key_file)], check=True, capture_output=True,
                       env={**os.environ})
        home = tmp_path / "home"  # no ~/.ssh keys to fall back on
        home.mkdir()
        r = SSHRunner("node-a", NodeConfig(**sshd.node(key_file=None, use_agent=True)))
        assert r.run("echo agent")[1].strip() == "agent"
        r.close()
        with pytest.raises(SSHError):  # agent off and no key file: the default keys are not ours
            env_home = os.environ.get("HOME")
            os.environ["HOME"] = str(home)
            try:
                SSHRunner("node-a", NodeConfig(**sshd.node(key_file=None, use_agent=False)))
            finally:
                os.environ["HOME"] = env_home or ""
    finally:
        os.kill(agent_pid, 15)
        if old is None:
            os.environ.pop("SSH_AUTH_SOCK", None)
        else:
            os.environ["SSH_AUTH_SOCK"] = old


# ---------------------------------------------------------------- processes
def test_start_runs_detached_in_its_own_group_and_stop_leaves_nothing(runner, tmp_path) -> None:
    port = free_port()
    # the service forks a child: stop must end the whole group, not just the leader
    child_script = ("import subprocess, sys, http.server, socketserver; "
                    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                    f"http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')")
    spec = ProcessSpec(name="svc", service="http", node="node-a", argv=[PY, "-c", child_script], port=port)
    log = tmp_path / "logs" / "svc.log"
    rec = runner.start(spec, str(log))
    wait_http(f"http://127.0.0.1:{port}/")
    assert rec.pid > 0 and rec.pgid == rec.pid
    assert os.getsid(rec.pid) == rec.pid  # session leader: survives the SSH connection
    assert len(live_group(rec.pgid)) == 2
    assert runner.alive(rec)
    # the connection that started it can go away; the runner reconnects on its next call
    runner.close()
    assert runner.client.get_transport() is None
    assert runner.alive(rec)
    assert log.is_file() and "start:" in log.read_text()
    assert "Serving HTTP" in runner.read_log(rec, 20) or wait_log(runner, rec, "Serving HTTP")
    runner.stop(rec, timeout=5)
    assert live_group(rec.pgid) == []
    assert not runner.alive(rec)


def wait_log(runner, rec, text: str, timeout: float = 10) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in runner.read_log(rec, 50):
            return True
        time.sleep(0.2)
    return False


def json_line(runner, rec, timeout: float = 10):
    """The first log line that is a JSON list (what the `python -c` probes print)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in runner.read_log(rec, 50).splitlines():
            if line.startswith("["):
                return json.loads(line)
        time.sleep(0.2)
    raise AssertionError(f"no JSON line in {rec.log_path}")


def test_stop_kills_a_group_that_ignores_term(runner, tmp_path) -> None:
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
    spec = ProcessSpec(name="stubborn", service="x", node="node-a", argv=[PY, "-c", script])
    rec = runner.start(spec, str(tmp_path / "stubborn.log"))
    assert wait_log(runner, rec, "ready")
    t0 = time.time()
    runner.stop(rec, timeout=1.0)
    assert time.time() - t0 < 15
    assert live_group(rec.pgid) == []


def test_env_workdir_and_venv_path_reach_the_process(sshd, tmp_path) -> None:
    work = tmp_path / "work dir"  # a space: the cd must be quoted
    work.mkdir()
    node = NodeConfig(**sshd.node(python=PY, workdir=str(work), env={"NODE_VAR": "from node"}))
    r = SSHRunner("node-a", node)
    try:
        script = "import os, json; print(json.dumps([os.getcwd(), os.environ.get('NODE_VAR'), os.environ.get('SPEC_VAR'), os.environ['PATH'].split(':')[0], os.environ.get('PYTHONUNBUFFERED')]))"
        spec = ProcessSpec(name="envcheck", service="x", node="node-a", argv=[PY, "-c", script],
                           env={"SPEC_VAR": "a b 'c' $HOME"})
        rec = r.start(spec, "logs/envcheck.log")  # relative: under the workdir, on the node
        got = json_line(r, rec)
        assert got == [str(work), "from node", "a b 'c' $HOME", str(Path(PY).parent), "1"]
        assert (work / "logs" / "envcheck.log").is_file()
    finally:
        r.close()


def test_missing_workdir_is_a_clear_error(sshd, tmp_path) -> None:
    r = SSHRunner("node-a", NodeConfig(**sshd.node(python=PY, workdir=str(tmp_path / "nope"))))
    try:
        with pytest.raises(SSHError, match=r"cluster.nodes.node-a.workdir"):
            r.start(ProcessSpec(name="x", service="x", node="node-a", argv=[PY, "-c", "pass"]),
                    str(tmp_path / "x.log"))
    finally:
        r.close()


def test_follow_log_streams_new_lines(runner, tmp_path) -> None:
    script = "import time\nfor i in range(6):\n    print('line', i, flush=True); time.sleep(0.3)\ntime.sleep(600)"
    spec = ProcessSpec(name="talker", service="x", node="node-a", argv=[PY, "-c", script])
    rec = runner.start(spec, str(tmp_path / "talker.log"))
    got = []
    for line in runner.follow_log(rec, interval=0.1):
        got.append(line)
        if "line 5" in line:
            break
    runner.stop(rec)
    assert "line 5" in got[-1]


# ---------------------------------------------------------------- quoting
HOSTILE = ["evil; rm -rf ~", "$(touch PWNED)", "`touch PWNED2`", "it's \"quoted\"", "a\nb", "*", "~", "--x=$HOME"]


def test_hostile_arguments_arrive_literally_as_a_sandboxed_user(sshd) -> None:
    # `rm -rf ~` is real here: it runs as a throwaway user whose home is a temp dir with a canary
    sandbox = world_readable_tmpdir("orchestr-sandbox-")
    home = sandbox / "home"
    user = sandbox_user(home)
    if user is None:
        pytest.skip("needs root to create a throwaway login")
    try:
        sshd.authorize(user)
        canary = home / "canary"
        canary.write_text("still here")
        os.chmod(home, 0o755)
        # the sandbox user cannot enter /root (where this venv's interpreter lives): system python
        sys_py = "/usr/bin/python3"
        node = NodeConfig(**sshd.node(user=user, python=sys_py, workdir=str(home)))
        from omegaconf import OmegaConf

        from orchestr.config import OrchestrConfig
        from orchestr.launch.plan import Planner

        # through the real planner: the model name lands in a worker's argv
        cfg = OmegaConf.merge(OmegaConf.structured(OrchestrConfig), {
            "cluster": {"nodes": {"node-a": sshd.node(user=user, python=sys_py, workdir=str(home))},
                        "workers": {"w": {"node": "node-a", "port": 31000, "model": "bad"}}},
            # (a model name is checked for separators; the other values reach argv as they are)
            "models": {"bad": {"name": "bad", "path": HOSTILE[1], "tokenizer": HOSTILE[2],
                               "conv_template": HOSTILE[3], "extra_args": [HOSTILE[0], *HOSTILE[4:]]}},
            "services": {"controller": {"node": "node-a"}, "api": {"node": "node-a"}, "web": {"node": "node-a"}},
        })
        planner = Planner(cfg)
        spec = planner.worker_spec("w", planner.cluster.workers["w"])
        assert spec.argv[:3] == [sys_py, "-m", "orchestr.services.model_worker"]
        # run the rendered argv with the interpreter printing what it received instead of serving
        spec.argv = [sys_py, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *spec.argv[3:]]
        spec.env_files = {}  # (no launch wrote the deployment's secret files here)
        r = SSHRunner("node-a", node)
        try:
            rec = r.start(spec, str(home / "logs" / "w.log"))
            got = json_line(r, rec)
        finally:
            r.close()
        assert got == spec.argv[3:]
        for hostile in HOSTILE:
            assert hostile in got
        assert canary.read_text() == "still here"
        assert not list(home.glob("PWNED*")) and not list(Path("/").glob("PWNED*"))
    finally:
        drop_sandbox_user()
        shutil.rmtree(sandbox, ignore_errors=True)


# ---------------------------------------------------------------- deployment over SSH
def two_node_specs(ports: list[int]) -> list[ProcessSpec]:
    fast = RestartPolicy(policy="on-failure", max_restarts=2, backoff_s=0.1, backoff_max_s=0.5)
    return [http_server_spec("front", ports[0], node="node-a", restart=fast),
            http_server_spec("back", ports[1], node="node-b", restart=fast, depends_on=["front"])]


def test_deployment_restarts_a_killed_remote_process_and_stops_everything(sshd, tmp_path) -> None:
    nodes = {n: NodeConfig(**sshd.node(python=PY)) for n in ("node-a", "node-b")}
    state_file = tmp_path / "state.json"
    dep = Deployment(two_node_specs([free_port(), free_port()]), nodes, run_dir=tmp_path, log_dir=str(tmp_path / "logs"),
                     controller="http://127.0.0.1:9", api=None, web=None, state_file=state_file,
                     health_timeout_s=30)
    events: list[str] = []
    try:
        dep.start_all(events.append)
        back = dep.state.record("back")
        assert back is not None and state_mod.load(state_file).record("back").pid == back.pid
        os.kill(back.pid, 9)
        time.sleep(0.3)
        for _ in range(20):  # found dead, then restarted once its backoff (0.1 s) has passed
            dep.watch_once(events.append)
            if dep.state.record("back").pid != back.pid:
                break
            time.sleep(0.1)
        new = dep.state.record("back")
        assert new.pid != back.pid and new.restarts == 1
        assert state_mod.load(state_file).record("back").pid == new.pid
        wait_http(new.spec.health_url)
        assert any(e.startswith("back died (found dead") and "restarting in" in e for e in events), events
    finally:
        pgids = [p.pgid for p in dep.state.processes]
        dep.stop_all(events.append)
    assert all(live_group(g) == [] for g in pgids)
    assert not state_file.exists()


def test_an_unreachable_host_never_delays_recovery_on_the_others(sshd, tmp_path) -> None:
    """node-b's "sshd" accepts connections and never says a word (a host cut off mid-path):
    a process killed on node-a is still restarted on the next passes, node-b's process is
    reported unreachable (not dead), and `orchestr status` says so without waiting on it."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted: the SSH banner never comes
    try:
        nodes = {"node-a": NodeConfig(**sshd.node(python=PY)),
                 "node-b": NodeConfig(**{**sshd.node(python=PY), "ssh_port": silent.getsockname()[1]})}
        fast = RestartPolicy(policy="on-failure", max_restarts=2, backoff_s=0.1, backoff_max_s=0.5)
        state_file = tmp_path / "state.json"
        dep = Deployment([http_server_spec("front", free_port(), node="node-a", restart=fast)], nodes,
                         run_dir=tmp_path, log_dir=str(tmp_path / "logs"), controller="http://127.0.0.1:9",
                         api=None, web=None, state_file=state_file, health_timeout_s=30)
        dep.probe_deadline_s = 2.0
        events: list[str] = []
        dep.start_all(events.append)
        ghost = ProcessRecord(spec=http_server_spec("ghost", free_port(), node="node-b"), pid=2**22 - 3,
                              pgid=2**22 - 3, log_path="/tmp/ghost.log")
        dep.state.processes.append(ghost)
        state_mod.save(dep.state, state_file)
        try:
            front = dep.state.record("front")
            os.kill(front.pid, 9)
            time.sleep(0.3)
            passes = 0
            while dep.state.record("front").pid == front.pid and passes < 6:
                dep.watch_once(events.append)
                passes += 1
            assert dep.state.record("front").pid != front.pid, events
            assert passes <= 3, events  # found dead on the first pass, restarted on the next ones
            assert any("node node-b does not answer" in e for e in events), events
            assert dep.state.record("ghost").restarts == 0  # unreachable is not dead
            wait_http(dep.state.record("front").spec.health_url)
            st = subprocess.run([*ORCHESTR, "status"], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "ORCHESTR_STATE_FILE": str(state_file)})
            rows = {x.split("│")[1].strip(): x for x in st.stdout.splitlines() if x.count("│") > 5}
            assert st.returncode == 3, st.stdout + st.stderr
            assert "UNREACHABLE" in rows["ghost"] and "DEAD" not in rows["ghost"], st.stdout
            assert " running " in rows["front"] and "found dead" in rows["front"], st.stdout  # last exit
            assert "node node-b does not answer" in st.stderr
        finally:
            dep.state.processes.remove(ghost)
            pgids = [p.pgid for p in dep.state.processes]
            dep.stop_all(events.append)
        assert all(live_group(g) == [] for g in pgids)
    finally:
        silent.close()


def test_day2_commands_over_ssh(sshd, tmp_path) -> None:
    nodes = {n: NodeConfig(**sshd.node(python=PY)) for n in ("node-a", "node-b")}
    state_file = tmp_path / "state.json"
    dep = Deployment(two_node_specs([free_port(), free_port()]), nodes, run_dir=tmp_path, log_dir=str(tmp_path / "logs"),
                     controller="http://127.0.0.1:9", api=None, web=None, state_file=state_file,
                     health_timeout_s=30)
    dep.start_all(lambda _: None)
    dep.runners.close()
    env = {**os.environ, "ORCHESTR_STATE_FILE": str(state_file)}
    pgids = [p.pgid for p in dep.state.processes]
    try:
        st = subprocess.run([*ORCHESTR, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert st.returncode == 0, st.stdout + st.stderr
        for name, node in (("front", "node-a"), ("back", "node-b")):
            line = next(x for x in st.stdout.splitlines() if f" {name} " in x)
            assert node in line and "running" in line
        httpx.get(dep.state.record("back").spec.health_url, trust_env=False)
        lg = subprocess.run([*ORCHESTR, "logs", "back", "-n", "5"], env=env, capture_output=True, text=True, timeout=60)
        assert lg.returncode == 0 and "GET / HTTP" in lg.stdout
        # --follow prints lines written after it started
        follow = subprocess.Popen([*ORCHESTR, "logs", "back", "--follow", "-n", "0"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(3)
            httpx.get(dep.state.record("back").spec.health_url + "follow-me", trust_env=False)
            deadline = time.time() + 20
            seen = ""
            while time.time() < deadline and "follow-me" not in seen:
                seen += follow.stdout.readline()
            assert "GET /follow-me" in seen
        finally:
            follow.terminate()
            follow.wait(10)
    finally:
        sp = subprocess.run([*ORCHESTR, "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert sp.returncode == 0, sp.stdout + sp.stderr
    assert "deployment stopped" in sp.stdout
    assert all(live_group(g) == [] for g in pgids)
    assert not state_file.exists()


def test_stop_deletes_the_secret_copies_on_the_nodes(sshd, tmp_path) -> None:
    """The secret files a deployment copied to its SSH nodes are gone after `orchestr stop`
    (as its files here are), and the copies of another deployment on the same node stay."""
    from orchestr.launch import secret_files

    nodes = {n: NodeConfig(**sshd.node(python=PY)) for n in ("node-a", "node-b")}
    state_file = tmp_path / "state.json"
    here = secret_files.secrets_dir(state_file)
    secret_files.DeploymentSecrets(service="s3cret-for-this-test").write(here)
    files = {secret_files.SERVICE_VAR: secret_files.secret_path(here, secret_files.SERVICE_VAR)}
    specs = [replace(s, env_files=files) for s in two_node_specs([free_port(), free_port()])]
    dep = Deployment(specs, nodes, run_dir=tmp_path, log_dir=str(tmp_path / "logs"), controller="http://127.0.0.1:9",
                     api=None, web=None, state_file=state_file, health_timeout_s=30)
    other = tmp_path / "other.secrets"  # another deployment's copy on node-a
    secret_files.DeploymentSecrets(service="not-ours").write(other)
    dep.start_all(lambda _: None)
    other_copy = Path(dep.runners["node-a"].place_files(
        replace(specs[0], env_files={secret_files.SERVICE_VAR: secret_files.secret_path(other, secret_files.SERVICE_VAR)})
    )[secret_files.SERVICE_VAR])
    dep.runners.close()
    pgids = [p.pgid for p in dep.state.processes]
    placed = {Path(psutil.Process(p.pid).environ()[secret_files.SERVICE_VAR]) for p in dep.state.processes}
    try:
        assert placed and all(p.read_text().strip() == "s3cret-for-this-test" and p.parent != here for p in placed)
    finally:
        sp = subprocess.run([*ORCHESTR, "stop"], env={**os.environ, "ORCHESTR_STATE_FILE": str(state_file)},
                            capture_output=True, text=True, timeout=120)
    assert sp.returncode == 0, sp.stdout + sp.stderr
    assert all(live_group(g) == [] for g in pgids)
    assert not here.exists()
    for p in placed:
        assert not p.exists() and not p.parent.exists()
    assert other_copy.read_text().strip() == "not-ours"
    shutil.rmtree(other_copy.parent)


def test_unreachable_node_fails_the_launch_cleanly(sshd, tmp_path) -> None:
    nodes = {"node-a": NodeConfig(**sshd.node(python=PY)),
             "node-b": NodeConfig(**sshd.node(python=PY, ssh_port=free_port()))}
    dep = Deployment(two_node_specs([free_port(), free_port()]), nodes, run_dir=tmp_path, log_dir=str(tmp_path / "logs"),
                     controller="http://127.0.0.1:9", api=None, web=None, state_file=tmp_path / "s.json",
                     health_timeout_s=30)
    with pytest.raises(LaunchError, match="cluster.nodes.node-b: cannot connect"):
        dep.start_all(lambda _: None)
    front = dep.state.record("front")
    assert front is not None and live_group(front.pgid) == []  # what started was stopped


def test_a_port_already_in_use_on_the_node_is_refused(runner, tmp_path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spec = http_server_spec("worker-x", port)
        spec.key = "cluster.workers.worker-x"
        with pytest.raises(SSHError, match=rf"cluster.workers.worker-x.port: port {port} on node 'node-a'"):
            runner.start(spec, str(tmp_path / "x.log"))
    assert not (tmp_path / "x.log").exists()  # nothing was started


def test_tools_resolve_from_the_nodes_venv(runner, tmp_path) -> None:
    # like `ray start --head` on a node whose python is a venv's: the bare command comes from
    # that venv's bin/ (sshd's default PATH does not have it)
    assert Path(PY).parent.joinpath("orchestr").exists()
    spec = ProcessSpec(name="tool", service="ray", node="node-a", argv=["orchestr", "--version"])
    rec = runner.start(spec, str(tmp_path / "tool.log"))
    assert wait_log(runner, rec, "orchestr 0.")


def test_stop_waits_for_a_supervisor_that_is_mid_restart(sshd, tmp_path) -> None:
    # a remote process dies; the detached supervisor is in its restart backoff when `orchestr
    # stop` arrives: the process it then starts must be stopped too, not left running
    nodes = {n: NodeConfig(**sshd.node(python=PY)) for n in ("node-a", "node-b")}
    state_file = tmp_path / "state.json"
    specs = two_node_specs([free_port(), free_port()])
    for s in specs:
        s.restart = RestartPolicy(policy="on-failure", max_restarts=3, backoff_s=3.0, backoff_max_s=3.0)
    dep = Deployment(specs, nodes, run_dir=tmp_path, log_dir=str(tmp_path / "logs"),
                     controller="http://127.0.0.1:9", api=None, web=None, state_file=state_file,
                     health_timeout_s=30)
    dep.start_all(lambda _: None)
    dep.runners.close()
    sup_log = open(tmp_path / "supervisor.log", "w")
    sup = subprocess.Popen([PY, "-m", "orchestr.launch.supervisor", "--state-file", str(state_file),
                            "--interval", "0.2"], stdout=sup_log, stderr=subprocess.STDOUT, start_new_session=True)
    dep.state.supervisor_pid = sup.pid
    state_mod.save(dep.state, state_file)
    env = {**os.environ, "ORCHESTR_STATE_FILE": str(state_file)}
    try:
        os.kill(dep.state.record("front").pid, 9)
        deadline = time.time() + 20
        while "front died (" not in (tmp_path / "supervisor.log").read_text():
            assert time.time() < deadline, (tmp_path / "supervisor.log").read_text()
            time.sleep(0.1)
        sp = subprocess.run([*ORCHESTR, "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert sp.returncode == 0, sp.stdout + sp.stderr
        assert sup.wait(10) == 0
        restarted = (tmp_path / "supervisor.log").read_text()
        assert "front died (" in restarted and "restarting in" in restarted
        left = servers_on([s.port for s in specs])
        assert left == [], f"left running after stop: {[p.info['cmdline'] for p in left]}"
    finally:
        if sup.poll() is None:
            sup.kill()
        sup_log.close()
        for p in servers_on([s.port for s in specs]):
            p.kill()


def servers_on(ports: list[int]) -> list[psutil.Process]:
    """Live `http.server` processes of this test's ports (however they were started)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if p.info["status"] != psutil.STATUS_ZOMBIE and "http.server" in cmd and any(str(x) in cmd for x in ports):
            found.append(p)
    return found
