"""`launch.backend=slurm` on the real single-machine Slurm cluster of scripts/setup_slurm.sh:
controller, worker and API run as Slurm jobs; status from squeue, logs from the job output
files, restart by Slurm's requeue after kill -9, stop by scancel leaving nothing behind.
One deployment for the module (the tests run in file order; the last ones kill and stop)."""

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

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def slurm_up() -> str | None:
    """None when the cluster answers (set up here when possible), else why not."""
    if os.geteuid() != 0:
        return "scripts/setup_slurm.sh needs root"
    r = subprocess.run(["bash", str(REPO / "scripts" / "setup_slurm.sh")], capture_output=True, text=True,
                       timeout=600)
    return None if r.returncode == 0 else f"setup_slurm.sh failed: {r.stderr[-500:]}"


def squeue(prefix: str) -> list[tuple[str, str, str]]:
    """(job id, name, state) of this deployment's jobs."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.split("|")[1].startswith(prefix)]


@dataclass
class SlurmDeployment:
    root: Path
    prefix: str
    ports: dict[str, int]
    launch_output: str

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}/v1"

    def orchestr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "ORCHESTR_STATE_FILE": str(self.root / "state.json")}
        return subprocess.run([*ORCHESTR, *args], env=env, capture_output=True, text=True, timeout=timeout)

    def ask(self, timeout: float = 60) -> str:
        client = openai.OpenAI(base_url=self.api_base, api_key="EMPTY", timeout=timeout, max_retries=0)
        r = client.chat.completions.create(model="smollm2-135m", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Say hello."}])
        return r.choices[0].message.content


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> SlurmDeployment:
    why = slurm_up()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("slurm")
    prefix = f"orchtest-{uuid.uuid4().hex[:6]}"
    ports = dict(zip(["controller", "api", "worker-0"], free_ports(3), strict=True))
    cmd = [*ORCHESTR, "launch", "launch.backend=slurm", "launch.detach=true",
           f"launch.slurm.job_name_prefix={prefix}", f"launch.state_file={root / 'state.json'}",
           f"launch.log_dir={root / 'logs'}", "launch.health_timeout_s=300",
           "services.web.enabled=false",
           "services.controller.host=127.0.0.1", "services.api.host=127.0.0.1", "services.worker.host=127.0.0.1",
           f"services.controller.port={ports['controller']}", f"services.api.port={ports['api']}",
           f"cluster.workers.worker-0.port={ports['worker-0']}",
           "services.worker.heart_beat_interval=5", "services.controller.heart_beat_expiration=20"]
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(root / "runs")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    dep = SlurmDeployment(root=root, prefix=prefix, ports=ports, launch_output=proc.stdout + proc.stderr)
    if proc.returncode != 0:
        logs = "".join(f"\n--- {f.name}\n{f.read_text(errors='replace')[-3000:]}"
                       for f in sorted((root / "logs").glob("*.log")))
        dep.orchestr("stop", timeout=180)
        pytest.fail(f"launch on slurm failed (rc={proc.returncode}):\n{dep.launch_output}\n{logs}")
    yield dep
    dep.orchestr("stop", timeout=180)
    for job, _name, _state in squeue(prefix):  # whatever a failed test left
        subprocess.run(["scancel", job], check=False)


def test_a_plan_slurm_cannot_place_fails_before_any_job(tmp_path) -> None:
    """A partition or node Slurm does not have: exit 2 naming the key and what exists, no sbatch."""
    why = slurm_up()
    if why:
        pytest.skip(why)
    prefix = f"orchtest-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs"), "ORCHESTR_STATE_FILE": str(tmp_path / "s.json")}
    base = [*ORCHESTR, "launch", "launch.backend=slurm", f"launch.slurm.job_name_prefix={prefix}",
            "services.web.enabled=false", f"launch.log_dir={tmp_path / 'logs'}"]
    for extra, key in ((["launch.slurm.partition=no-such-partition"], "launch.slurm.partition"),
                       (["+launch.slurm.nodelist.local=no-such-node"], "launch.slurm.nodelist.local")):
        out = subprocess.run([*base, *extra], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stdout + out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and key in out.stderr and "it has" in out.stderr
    assert squeue(prefix) == []


def test_services_run_as_slurm_jobs_and_answer_the_openai_sdk(slurm) -> None:
    jobs = {name.removeprefix(slurm.prefix + "-"): state for _, name, state in squeue(slurm.prefix)}
    assert jobs == {"controller": "RUNNING", "worker-0": "RUNNING", "api": "RUNNING"}
    assert slurm.ask().strip()


def test_workers_find_the_controller_through_the_scheduler(slurm) -> None:
    script = (slurm.root / "logs" / "worker-0.sbatch").read_text()
    assert f"squeue -h --me -n {slurm.prefix}-controller" in script
    assert '--controller-address "http://${CONTROLLER_ADDR}:' in script
    assert f"127.0.0.1:{slurm.ports['controller']}" not in script  # no hard-coded host
    # the launcher's own job line shows no environment values
    for job, _, _ in squeue(slurm.prefix):
        show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert "ORCHESTR_" not in show.split("Command=")[-1].splitlines()[0]


def test_the_service_secret_reaches_the_jobs_but_no_command_line(slurm) -> None:
    secret = (slurm.root / "state.secrets" / "service_secret").read_text().strip()
    assert len(secret) > 16
    for f in (slurm.root / "logs").glob("*.sbatch"):
        assert secret not in f.read_text()
    for job, _, _ in squeue(slurm.prefix):
        assert secret not in subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    for p in psutil.process_iter(["cmdline"]):
        assert secret not in " ".join(p.info["cmdline"] or [])
    url = f"http://127.0.0.1:{slurm.ports['controller']}/list_models"
    assert httpx.post(url, trust_env=False).status_code == 401
    r = httpx.post(url, headers={"Authorization": f"Bearer {secret}"}, trust_env=False)
    assert r.status_code == 200 and "smollm2-135m" in r.text


def test_status_comes_from_squeue_and_logs_from_the_job_output(slurm) -> None:
    out = slurm.orchestr("status")
    assert out.returncode == 0, out.stdout + out.stderr
    job_ids = {name.removeprefix(slurm.prefix + "-"): job for job, name, _ in squeue(slurm.prefix)}
    for name, job in job_ids.items():
        line = next(ln for ln in out.stdout.splitlines() if f" {name} " in ln)
        assert f" {job} " in line and " running " in line
    logs = slurm.orchestr("logs", "worker-0", "-n", "400")
    assert logs.returncode == 0
    assert f"slurm job {job_ids['worker-0']} on " in logs.stdout
    assert "registered" in logs.stdout


def _worker_process(port: int) -> psutil.Process:
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "orchestr.services.model_worker" in cmd and f"--port {port}" in cmd:
            return p
    raise AssertionError("worker process not found")


def test_killed_worker_is_requeued_by_slurm_and_serves_again(slurm) -> None:
    port = slurm.ports["worker-0"]
    (job,) = [j for j, name, _ in squeue(slurm.prefix) if name.endswith("-worker-0")]
    victim = _worker_process(port)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    deadline = time.time() + 240
    back = False
    while time.time() < deadline:
        try:
            h = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).json()
            if h.get("registered") and _worker_process(port).pid != victim.pid:
                back = True
                break
        except (httpx.HTTPError, AssertionError, ValueError):
            pass
        time.sleep(2)
    assert back, (slurm.root / "logs" / "worker-0.log").read_text()[-2000:]
    show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in show and "JobState=RUNNING" in show  # the same job, requeued once
    deadline = time.time() + 60
    while True:  # the controller may still hold the dead worker's entry for a heartbeat or two
        try:
            assert slurm.ask().strip()
            break
        except openai.APIError:
            if time.time() > deadline:
                raise
            time.sleep(2)


def test_stop_cancels_every_job_and_leaves_no_process(slurm) -> None:
    out = slurm.orchestr("stop", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert squeue(slurm.prefix) == []
    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if any(str(port) in " ".join(p.info["cmdline"] or []) for port in slurm.ports.values())
            and "orchestr" in " ".join(p.info["cmdline"] or [])]
    assert left == []
    assert not (slurm.root / "state.json").exists()


def _sweep(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*ORCHESTR, "eval", "-m", "model=smollm2-135m", *extra,
           f"services.api.port={free_ports(1)[0]}",  # nothing listens: the model loads in-process
           "eval.answer.question_end=1", "eval.answer.max_tokens=8", "judge.first_n=1"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "ORCHESTR_RUNS_DIR": str(cwd / "runs")})


def _files(root: Path) -> dict[str, set[str]]:
    """relative path -> the keys of its first JSON record ({} for other files)."""
    import json

    out = {}
    for f in sorted((root / "data").rglob("*")):
        if f.is_file() and f.name != "judge_cache.jsonl":
            keys = set(json.loads(f.read_text().splitlines()[0])) if f.suffix == ".jsonl" else set()
            out[str(f.relative_to(root))] = keys
    return out


def test_eval_sweep_runs_as_slurm_jobs_via_submitit_and_writes_what_a_local_sweep_writes(tmp_path) -> None:
    if why := slurm_up():
        pytest.skip(why)
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    on_slurm.mkdir()
    local.mkdir()
    r = _sweep(on_slurm, "hydra/launcher=submitit_slurm", "hydra.launcher.name=orchtest-eval")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    # the job ran under Slurm: submitit's folder holds the Slurm job's own output
    (log,) = on_slurm.glob("runs/*/*/.submitit/*/*_0_log.out")
    assert "Job completed successfully" in log.read_text()
    assert "#SBATCH --job-name=orchtest-eval" in next(log.parent.glob("*_submission.sh")).read_text()
    r = _sweep(local)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    got, want = _files(on_slurm), _files(local)
    assert got == want and any(p.endswith("model_judgment/smollm2-135m_single.jsonl") for p in got)


def test_a_service_failing_at_start_up_fails_the_launch_with_its_log_and_leaves_no_job(tmp_path) -> None:
    if why := slurm_up():
        pytest.skip(why)
    prefix = f"orchtest-{uuid.uuid4().hex[:6]}"
    ports = free_ports(3)
    cmd = [*ORCHESTR, "launch", "launch.backend=slurm", "launch.detach=true", "services.web.enabled=false",
           f"launch.slurm.job_name_prefix={prefix}", f"launch.state_file={tmp_path / 'state.json'}",
           f"launch.log_dir={tmp_path / 'logs'}", "launch.health_timeout_s=300",
           "services.controller.host=127.0.0.1", "services.api.host=127.0.0.1", "services.worker.host=127.0.0.1",
           f"services.controller.port={ports[0]}", f"services.api.port={ports[1]}",
           f"cluster.workers.worker-0.port={ports[2]}", "cluster.workers.worker-0.extra_args=[--no-such-flag]"]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "worker-0 exited during start-up" in out.stdout and "--no-such-flag" in out.stdout
    assert time.time() - t0 < 200  # not launch.health_timeout_s
    assert squeue(prefix) == []
