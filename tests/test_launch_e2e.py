"""`orchestr launch` end to end on the embedded model: the seed's SDK snippet, status, restart, stop."""

from __future__ import annotations

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

from tests.conftest import ORCHESTR, free_ports

pytestmark = pytest.mark.slow


def test_seed_openai_snippet_works_unchanged_but_for_the_model(deployment) -> None:
    # FastChat's README snippet, with the official SDK's module-level client
    openai.api_key = "EMPTY"
    openai.base_url = deployment.api_base + "/"
    try:
        model = "smollm2-135m"
        prompt = "Once upon a time"
        completion = openai.completions.create(model=model, prompt=prompt, max_tokens=24)
        assert completion.choices[0].text.strip()
        completion = openai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello! What is your name?"}], max_tokens=48)
        assert completion.choices[0].message.content.strip()
        assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 0
    finally:
        openai.base_url = None


def test_streamed_chat_arrives_in_several_chunks(deployment) -> None:
    client = openai.OpenAI(base_url=deployment.api_base, api_key="EMPTY")
    stream = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Count from one to ten in words."}],
        max_tokens=40, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3
    assert "".join(pieces).strip()


def test_models_lists_both_contestants(deployment) -> None:
    client = openai.OpenAI(base_url=deployment.api_base, api_key="EMPTY")
    ids = {m.id for m in client.models.list().data}
    assert set(deployment.model_names) <= ids


def test_status_shows_every_process_registered(deployment) -> None:
    out = deployment.orchestr("status")
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("controller", "worker-0", "worker-1", "api", "web"):
        assert name in out.stdout
    assert "smollm2-135m-int8" in out.stdout
    assert "DEAD" not in out.stdout and "UNREACHABLE" not in out.stdout
    assert "no " not in out.stdout.split("registered")[-1].split("\n")[0]


def test_logs_command_prints_a_worker_log(deployment) -> None:
    out = deployment.orchestr("logs", "worker-0", "-n", "50")
    assert out.returncode == 0
    assert out.stdout.strip()
    bad = deployment.orchestr("logs", "nobody")
    assert bad.returncode == 2 and "worker-0" in bad.stderr


def test_second_launch_on_the_same_state_is_refused(deployment) -> None:
    out = subprocess.run([*ORCHESTR, "launch", "launch.detach=true", f"launch.state_file={deployment.state_file}"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ORCHESTR_RUNS_DIR": str(deployment.root / "runs")})
    assert out.returncode == 2
    assert "already running" in out.stderr and "Traceback" not in out.stderr


def _deployment_pids(root: Path) -> list[int]:
    """Processes whose command line mentions this deployment's folder or ports."""
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(root) in cmd and "pytest" not in cmd:
            pids.append(p.info["pid"])
    return pids


API_KEY = "sk-lifecycle-Zq8y2"


def _files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text in p.read_text(errors="replace")]


def test_lifecycle_restart_and_stop_leave_nothing_behind(tmp_path: Path) -> None:
    """A second, small deployment: detach (state file from ORCHESTR_STATE_FILE, an API key as a
    command-line override), kill a worker (restarted), stop (no process, no secret left)."""
    ctrl, api, worker = free_ports(3)
    state = tmp_path / "state.json"
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs"), "ORCHESTR_STATE_FILE": str(state)}
    launch = subprocess.run(
        [*ORCHESTR, "launch", "launch.detach=true", f"services.api.api_keys=[{API_KEY}]",
         f"launch.log_dir={tmp_path / 'logs'}", "services.web.enabled=false",
         f"services.controller.port={ctrl}", f"services.api.port={api}",
         f"cluster.workers.worker-0.port={worker}", "services.worker.heart_beat_interval=3",
         "cluster.workers.worker-0.restart.backoff_s=0.5"],
        capture_output=True, text=True, timeout=900, env=env)
    assert launch.returncode == 0, launch.stdout + launch.stderr
    try:
        assert "api" in launch.stdout and f":{api}/v1" in launch.stdout
        import json

        # the key and the service secret: never on a command line, in the output, the run
        # folder (Hydra's record of the overrides included), the logs or the state file (0600)
        assert state.stat().st_mode & 0o077 == 0
        secret_file = Path(json.loads(state.read_text())["secret_file"])
        assert secret_file.stat().st_mode & 0o077 == 0 and secret_file.parent.stat().st_mode & 0o077 == 0
        secret = secret_file.read_text().strip()
        assert len(secret) >= 32
        for value in (API_KEY, secret):
            assert value not in launch.stdout + launch.stderr
            assert _files_holding(tmp_path / "runs", value) == []
            assert _files_holding(tmp_path / "logs", value) == []
            assert value not in state.read_text()
            for p in psutil.process_iter(["cmdline"]):
                assert value not in " ".join(p.info["cmdline"] or [])
        assert _files_holding(tmp_path / "runs", "services.api.api_keys")  # the override, scrubbed
        # internal services want the deployment's secret; the API its key
        assert httpx.post(f"http://127.0.0.1:{ctrl}/list_models", timeout=5).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{api}/v1", api_key="wrong", max_retries=0).models.list()
        # a day-2 command takes the API's address and key from the record (issue 28), none repeated
        ev = subprocess.run([*ORCHESTR, "eval", "eval.answer.backend=api", "eval.step=answer",
                             "eval.answer.question_end=1", "eval.answer.max_tokens=4",
                             f"eval.data_dir={tmp_path / 'eval'}"], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in env.items() if k != "ORCHESTR_API_KEY"}, cwd=tmp_path)
        assert ev.returncode == 0 and "its API key" in ev.stderr and f":{api}/v1" in ev.stderr, ev.stdout + ev.stderr
        assert API_KEY not in ev.stdout + ev.stderr

        recorded = json.loads(state.read_text())
        worker_rec = next(p for p in recorded["processes"] if p["spec"]["name"] == "worker-0")
        os.killpg(worker_rec["pgid"], signal.SIGKILL)
        # the detached supervisor restarts it and it registers again
        deadline = time.time() + 300
        restarted = None
        while time.time() < deadline:
            now = json.loads(state.read_text())
            rec = next(p for p in now["processes"] if p["spec"]["name"] == "worker-0")
            if rec["restarts"] >= 1 and psutil.pid_exists(rec["pid"]):
                restarted = rec
                r = httpx.post(f"http://127.0.0.1:{ctrl}/list_models", timeout=5,
                               headers={"Authorization": f"Bearer {secret}"})
                if "smollm2-135m" in r.json()["models"]:
                    try:
                        chat = openai.OpenAI(base_url=f"http://127.0.0.1:{api}/v1", api_key=API_KEY).chat.completions.create(
                            model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
                        if chat.choices[0].message.content:
                            break
                    except openai.APIError:
                        pass
            time.sleep(1)
        else:
            pytest.fail(f"worker-0 was not restarted and re-registered: {state.read_text()}")
        assert restarted["pid"] != worker_rec["pid"]
    finally:
        stop = subprocess.run([*ORCHESTR, "stop"], capture_output=True, text=True, timeout=180, env=env)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not state.exists() and not secret_file.exists()
    time.sleep(0.5)
    assert _deployment_pids(tmp_path) == []
    for port in (ctrl, api, worker):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_launch_reports_a_port_already_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        out = subprocess.run([*ORCHESTR, "launch", f"services.api.port={busy}", f"launch.state_file={tmp_path / 's.json'}"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path)})
    assert out.returncode == 2
    assert "services.api.port" in out.stderr and "already in use" in out.stderr


def test_hub_model_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    ctrl, api, worker = free_ports(3)
    t0 = time.time()
    out = subprocess.run(
        [*ORCHESTR, "launch", "model=vicuna-7b-v1.5", "services.web.enabled=false", f"launch.state_file={tmp_path / 's.json'}",
         f"services.controller.port={ctrl}", f"services.api.port={api}", f"cluster.workers.worker-0.port={worker}",
         "cluster.workers.worker-0.restart.policy=no"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path)})
    assert out.returncode != 0
    assert "lmsys/vicuna-7b-v1.5" in out.stdout
    assert time.time() - t0 < 120
    assert _deployment_pids(tmp_path) == []


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
