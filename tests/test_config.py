"""Config composition, overrides, validation errors and the rendered plan (fast, no model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from orchestr.config import compose
from orchestr.errors import ConfigError
from orchestr.launch.plan import Planner, build_plan, render_plan

REPO = Path(__file__).resolve().parents[1]


def run_orchestr(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestr", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, cwd=cwd)


def test_default_config_serves_the_embedded_model() -> None:
    cfg = compose()
    assert cfg.model.name == "smollm2-135m"
    assert cfg.model.path == "embedded://SmolLM2-135M-Instruct"
    assert cfg.cluster.name == "local"
    assert list(cfg.cluster.workers) == ["worker-0"]


def test_overrides_reach_the_rendered_command_lines() -> None:
    cfg = compose(["services.api.port=9000", "model=vicuna-7b-v1.5", "engine.batching=false"])
    specs = {s.name: s for s in build_plan(cfg)}
    api = specs["api"].argv
    assert api[api.index("--port") + 1] == "9000"
    worker = specs["worker-0"].argv
    assert worker[worker.index("--model-path") + 1] == "lmsys/vicuna-7b-v1.5"
    assert worker[worker.index("--conv-template") + 1] == "vicuna_v1.1"
    assert "--no-batching" in worker


@pytest.mark.parametrize("override, key", [
    ("services.api.prot=9000", "services.api.prot"),
    ("model.foo=1", "model.foo"),
    ("services.api.port=abc", "services.api.port"),
    ("engine.max_batch_size=lots", "engine.max_batch_size"),
])
def test_wrong_key_or_type_fails_before_anything_starts(override: str, key: str) -> None:
    out = run_orchestr("launch", override, "launch.dry_run=true")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert key in text
    assert "Traceback" not in text


def test_unknown_group_option_lists_the_choices() -> None:
    out = run_orchestr("launch", "model=does-not-exist")
    assert out.returncode != 0
    assert "smollm2-135m" in out.stderr and "Traceback" not in out.stderr


def test_cfg_job_prints_the_composed_config() -> None:
    out = run_orchestr("launch", "--cfg", "job", "services.api.port=9123")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.services.api.port == 9123
    assert cfg.model.name == "smollm2-135m"


@pytest.mark.parametrize("command,flags", [
    ("launch", ["--cfg", "job"]),
    ("launch", ["--cfg", "all"]),  # the hydra section records the overrides as typed
    ("launch", ["--info"]),
    ("launch", ["--help"]),
    ("eval", ["--cfg", "job", "--resolve"]),  # the env-held key resolved
])
def test_hydra_printing_the_config_shows_no_secret(command: str, flags: list[str]) -> None:
    out = run_orchestr(command, "services.api.api_keys=[sk-typed-4f2a9,${oc.env:ORCHESTR_TEST_KEY}]",
                       "services.web.auth=[ann:pw-7c1e3]", "launch.secret=svc-91d0b", *flags,
                       env={"ORCHESTR_TEST_KEY": "sk-env-5b8e7"})
    assert out.returncode == 0, out.stderr
    shown = out.stdout + out.stderr
    for secret in ("sk-typed-4f2a9", "sk-env-5b8e7", "pw-7c1e3", "svc-91d0b"):
        assert secret not in shown, (secret, flags)
    assert "***" in shown
    if flags[:2] == ["--cfg", "job"]:  # still the config, the secrets' places marked
        cfg = OmegaConf.create(out.stdout)
        assert cfg.launch.secret == "***" and cfg.services.web.auth == ["***"]
        assert cfg.services.api.api_keys[0] == "***"


def test_dry_run_prints_command_lines_and_starts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    out = run_orchestr("launch", "launch.dry_run=true", f"launch.state_file={state}",
                       env={"ORCHESTR_RUNS_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line and not line.startswith("#")]
    assert any("orchestr.services.controller" in line and "--port 21001" in line for line in lines)
    assert any("orchestr.services.model_worker" in line and "--controller-address http://127.0.0.1:21001" in line
               for line in lines)
    assert any("orchestr.services.openai_api_server" in line for line in lines)
    assert not state.exists()


def test_plan_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.workers\.worker-0\.node"):
        build_plan(compose(["cluster.workers.worker-0.node=elsewhere"]))
    with pytest.raises(ConfigError, match=r"cluster\.workers\.worker-1\.port"):
        build_plan(compose(["cluster=local_arena", "cluster.workers.worker-1.port=21002"]))
    with pytest.raises(ConfigError, match=r"cluster\.workers\.worker-0\.model"):
        build_plan(compose(["cluster.workers.worker-0.model=ghost"]))
    with pytest.raises(ConfigError, match=r"services\.api\.port"):
        build_plan(compose(["services.api.port=21001"]))


def test_local_arena_has_two_contestants() -> None:
    cfg = compose(["cluster=local_arena"])
    specs = {s.name: s for s in build_plan(cfg)}
    assert specs["worker-0"].models == ["smollm2-135m"]
    assert specs["worker-1"].models == ["smollm2-135m-int8"]
    assert "--load-8bit" in specs["worker-1"].argv
    assert specs["web"].depends_on == ["controller", "worker-0", "worker-1"]
    text = render_plan(list(specs.values()), Planner(cfg).cluster)
    assert text.startswith("# node local")


def test_user_config_folder_adds_a_model(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my-model.yaml").write_text("name: my-model\npath: /models/my-model\n")
    out = run_orchestr("launch", "model=my-model", "launch.dry_run=true",
                       env={"ORCHESTR_CONFIG_PATH": str(tmp_path), "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")})
    assert out.returncode == 0, out.stderr
    assert "--model-path /models/my-model --model-names my-model" in out.stdout
    # Hydra's own way works too
    out = run_orchestr("launch", "model=my-model", "launch.dry_run=true", f"hydra.searchpath=[file://{tmp_path}]",
                       env={"ORCHESTR_RUNS_DIR": str(tmp_path / "runs")})
    assert out.returncode == 0, out.stderr
    assert "--model-names my-model" in out.stdout


def test_conf_tree_travels_with_a_non_editable_install(tmp_path: Path) -> None:
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                            str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    assert (target / "orchestr" / "conf" / "config.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")}
    out = subprocess.run([sys.executable, "-m", "orchestr", "launch", "launch.dry_run=true"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "orchestr.services.model_worker" in out.stdout
    probe = subprocess.run([sys.executable, "-c", "import orchestr.config as c; print(c.CONF_DIR)"],
                           cwd=elsewhere, capture_output=True, text=True, env=env)
    assert probe.stdout.strip().startswith(str(target))


# --------------------------------------------------------------------------- user mistakes


@pytest.mark.parametrize("override, key", [
    ("services.controller.dispatch_method=foo", "services.controller.dispatch_method"),
    ("model.dtype=fp16", "model.dtype"),
    ("services.web.mode=both", "services.web.mode"),
    ("cluster.workers.worker-0.restart.policy=sometimes", "cluster.workers.worker-0.restart.policy"),
    ("engine.max_batch_size=-3", "engine.max_batch_size"),
    ("model.name=", "model.name"),
    ("model.name=a\\,b", "model.name"),
    ("cluster.nodes.local.address=0.0.0.0", "cluster.nodes.local.address"),
    ("+cluster.workers.w1.port=21010", "cluster.workers"),
])
def test_each_user_mistake_is_one_line_naming_the_key_with_exit_code_2(override: str, key: str,
                                                                      tmp_path: Path) -> None:
    out = run_orchestr("launch", override, "launch.dry_run=true", env={"ORCHESTR_RUNS_DIR": str(tmp_path)})
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"orchestr launch: {key}: "), out.stderr
    assert out.stdout == ""  # no plan printed


def test_a_range_mistake_stops_a_real_launch_before_anything_starts(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    out = run_orchestr("launch", "engine.max_batch_size=-3", env={"ORCHESTR_RUNS_DIR": str(tmp_path / "runs"),
                                                                  "ORCHESTR_STATE_FILE": str(state)})
    assert out.returncode == 2 and "engine.max_batch_size: must be at least 1, got -3" in out.stderr
    assert "starting" not in out.stdout and not state.exists()


def test_a_worker_added_from_the_command_line(tmp_path: Path) -> None:
    out = run_orchestr("launch", "+worker@cluster.workers.w1=default", "cluster.workers.w1.port=21010",
                       "launch.dry_run=true", env={"ORCHESTR_RUNS_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    w1 = next(line for line in out.stdout.splitlines() if "--port 21010" in line)
    assert "orchestr.services.model_worker" in w1 and "--worker-address http://127.0.0.1:21010" in w1
    assert "--port 21002" in out.stdout  # worker-0 is still there


def test_the_controller_can_be_one_already_running(tmp_path: Path) -> None:
    cfg = compose(["services.controller.enabled=false", "services.controller.port=31001"])
    specs = {s.name: s for s in build_plan(cfg)}
    assert "controller" not in specs
    worker = specs["worker-0"].argv
    assert worker[worker.index("--controller-address") + 1] == "http://127.0.0.1:31001"
    assert all("controller" not in s.depends_on for s in specs.values())


def test_services_bind_the_nodes_own_address_by_default() -> None:
    specs = build_plan(compose())
    for s in specs:
        assert s.argv[s.argv.index("--host") + 1] == "127.0.0.1", s.name
    api = next(s for s in build_plan(compose(["services.api.host=0.0.0.0"])) if s.name == "api")
    assert api.argv[api.argv.index("--host") + 1] == "0.0.0.0"


@pytest.mark.parametrize("command", ["launch", "eval", "clean"])
def test_a_user_config_folder_serves_every_hydra_command(command: str, tmp_path: Path) -> None:
    # the override after the user's arguments once broke `--cfg job`; eval ignored the variable
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my-model.yaml").write_text("name: my-model\npath: /models/my-model\n")
    out = run_orchestr(command, "model=my-model", "--cfg", "job",
                       env={"ORCHESTR_CONFIG_PATH": str(tmp_path), "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")})
    assert out.returncode == 0, out.stderr
    assert OmegaConf.create(out.stdout).model.path == "/models/my-model"
