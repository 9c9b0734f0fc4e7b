"""`orchestr render k8s`: the seed's four-node topology as manifests that pass the Kubernetes
schemas (kubernetes-validate, offline), with its GPUs, probes and secret references."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ORCHESTR

# the seed's multi-node commands: CUDA_VISIBLE_DEVICES entries per worker (vicuna-33b runs its
# vLLM tensor parallel over the `CUDA_VISIBLE_DEVICES=2,3 ray start --head` GPUs)
SEED_GPUS = {
    "vicuna-13b-0": 1, "vicuna-13b-1": 1, "vicuna-33b": 2,
    "llama-2-13b-chat-0": 1, "llama-2-13b-chat-1": 1, "llama-2-7b-chat": 1, "wizardlm-13b": 1,
    "mpt-30b-chat": 2, "guanaco-33b": 2,
    "multi-rwkv-t5": 1, "multi-oasst-mpt": 1, "multi-vicuna-chatglm": 1, "alpaca-13b": 1,
}
API_KEY = "sk-render-test-4f1c9e"
SECRET = "render-test-service-secret-77ab"


def _orchestr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORCHESTR_SECRET": SECRET}
    return subprocess.run([*ORCHESTR, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("k8s")
    r = _orchestr("render", "k8s", "--out", str(out), "cluster=multi_node",
                  f"services.api.api_keys=[{API_KEY}]", "launch.kubernetes.namespace=chat",
                  "+launch.kubernetes.node_selectors.node-03.accelerator=a100")
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(out.glob("*.yaml"))
    assert files
    objs = [yaml.safe_load(f.read_text()) for f in files]
    by_kind: dict[str, list[dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    by_kind["_files"] = files  # type: ignore[assignment]
    return by_kind


def _container(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]["containers"][0]


def _by_process(rendered) -> dict[str, dict]:
    return {d["metadata"]["annotations"]["orchestr.io/process"]: d for d in rendered["Deployment"]}


def test_every_manifest_passes_the_kubernetes_schema(rendered) -> None:
    version = kubernetes_validate.latest_version()
    for f in rendered["_files"]:
        kubernetes_validate.validate(yaml.safe_load(f.read_text()), version, strict=True)
    # and the validator does reject a broken one (so the loop above can fail)
    bad = yaml.safe_load(rendered["_files"][2].read_text())
    bad["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def test_one_gpu_request_per_cuda_visible_devices_entry_of_the_seed(rendered) -> None:
    deps = _by_process(rendered)
    got = {}
    for name, d in deps.items():
        res = _container(d)["resources"]
        if "nvidia.com/gpu" in res["requests"]:
            assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"]
            got[name] = res["requests"]["nvidia.com/gpu"]
    assert got == SEED_GPUS
    assert sum(got.values()) == 16  # four nodes of four GPUs
    assert set(deps) == {"controller", "api", "web", *SEED_GPUS}  # the Ray head is no pod


def test_services_find_each_other_by_service_name_and_probe_health(rendered) -> None:
    deps = _by_process(rendered)
    services = {s["metadata"]["name"]: s for s in rendered["Service"]}
    for name, d in deps.items():
        c = _container(d)
        cmd = c["command"]
        assert cmd[0] == "python" and "node-01" not in " ".join(cmd)
        port = c["ports"][0]["containerPort"]
        assert services[d["metadata"]["name"]]["spec"]["ports"][0]["targetPort"] == port
        if name != "controller":
            assert cmd[cmd.index("--controller-address") + 1] == "http://orchestr-controller:10002"
        path = "/" if name == "web" else "/health"
        assert c["readinessProbe"]["httpGet"] == {"path": path, "port": port}
    w = _container(deps["vicuna-13b-0"])["command"]
    assert w[w.index("--worker-address") + 1] == "http://orchestr-vicuna-13b-0:31000"
    assert deps["mpt-30b-chat"]["spec"]["template"]["spec"]["nodeSelector"] == {"accelerator": "a100"}
    assert all(d["metadata"]["namespace"] == "chat" for d in rendered["Deployment"])


def test_secrets_are_referenced_never_rendered(rendered) -> None:
    for f in rendered["_files"]:
        text = f.read_text()
        assert API_KEY not in text and SECRET not in text, f.name
    assert "Secret" not in rendered  # a reference to the user's Secret, no Secret object
    api = _container(_by_process(rendered)["api"])
    assert "--api-keys" not in api["command"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in api["env"] if "valueFrom" in e}
    assert refs["ORCHESTR_API_KEYS"] == {"name": "orchestr-secrets", "key": "ORCHESTR_API_KEYS", "optional": True}
    assert refs["ORCHESTR_SECRET"]["key"] == "ORCHESTR_SECRET"
    worker_refs = {e["name"] for e in _container(_by_process(rendered)["alpaca-13b"])["env"] if "valueFrom" in e}
    assert worker_refs == {"ORCHESTR_SECRET"}


def test_configmap_holds_the_composed_config(rendered) -> None:
    (cm,) = rendered["ConfigMap"]
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert cfg["cluster"]["name"] == "multi_node"
    assert cfg["cluster"]["workers"]["guanaco-33b"]["gpus"] == [2, 3]
    assert cfg["services"]["api"]["api_keys"] == "<redacted: see the Secret>"
    for d in rendered["Deployment"]:
        vols = d["spec"]["template"]["spec"]["volumes"]
        assert vols == [{"name": "config", "configMap": {"name": cm["metadata"]["name"]}}]


def test_kubernetes_backend_renders_on_dry_run_and_refuses_to_deploy(tmp_path) -> None:
    r = _orchestr("launch", "cluster=multi_node", "launch.backend=kubernetes", "launch.dry_run=true",
                  f"launch.kubernetes.output_dir={tmp_path / 'm'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(list((tmp_path / "m").glob("*-deployment-*.yaml"))) == 16
    r = _orchestr("launch", "cluster=multi_node", "launch.backend=kubernetes", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2 and "launch.dry_run=true" in r.stdout


def test_unknown_backend_is_a_config_error(tmp_path) -> None:
    r = _orchestr("launch", "launch.backend=nomad", "launch.dry_run=true", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2
    assert "launch.backend" in r.stderr and "slurm" in r.stderr and "Traceback" not in r.stderr
    r = _orchestr("render", "k8s", "cluster=no_such_cluster")
    assert r.returncode == 2 and "Traceback" not in r.stderr
