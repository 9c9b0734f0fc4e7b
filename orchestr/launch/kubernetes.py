"""Kubernetes manifests from the plan (`orchestr render k8s`, or `launch.backend=kubernetes`
with `launch.dry_run=true`). orchestr renders; `kubectl apply -f DIR` deploys.

Each process spec becomes a Deployment (one replica) and, when it listens, a Service named after
it, so processes find each other by Service name instead of node addresses. GPUs become
`nvidia.com/gpu` requests (one per CUDA_VISIBLE_DEVICES entry the plan sets; a vLLM worker that
the seed spreads over a `ray start --head`'s GPUs requests those), readiness probes GET the
spec's health path. The composed config goes into a ConfigMap with every secret-looking value
blanked; the service secret, API keys and web logins come from a Secret the user creates
(`launch.kubernetes.secret_name`), referenced by name and key, never rendered.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from omegaconf import DictConfig, OmegaConf

from orchestr.config.backends import KubernetesConfig
from orchestr.config.serving import LaunchConfig
from orchestr.launch.spec import ProcessSpec

SECRET_ENV = {  # env var -> which processes read it
    "ORCHESTR_SECRET": None,  # all
    "ORCHESTR_API_KEYS": {"openai_api_server"},
    "ORCHESTR_WEB_AUTH": {"web"},
}
SECRET_KEYS = re.compile(r"(secret|password|passwd|token|api_keys?|auth)$", re.I)
WORKERS = {"model_worker", "vllm_worker", "multi_model_worker", "openvino_worker"}
CONFIG_MOUNT = "/etc/orchestr"


def dns_name(name: str) -> str:
    """A process name as an RFC 1123 label (Service and Deployment names)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return f"orchestr-{label}"[:63].rstrip("-")


def redact(node: object, key: str = "") -> object:
    """The config with every secret-looking value replaced (ConfigMaps are not secret)."""
    if isinstance(node, dict):
        return {k: redact(v, str(k)) for k, v in node.items()}
    if SECRET_KEYS.search(key) and node not in (None, "", [], {}):
        return "<redacted: see the Secret>"
    if isinstance(node, list):
        return [redact(v) for v in node]
    return node


def gpu_requests(specs: list[ProcessSpec]) -> dict[str, int]:
    by_name = {s.name: s for s in specs}
    out = {}
    for s in specs:
        if s.service == "ray":
            continue
        n = len([d for d in s.env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()])
        if not n:  # the seed's vLLM worker on a `ray start --head`'s GPUs
            heads = [by_name[d] for d in s.depends_on if d in by_name and by_name[d].service == "ray"]
            n = sum(len([x for x in h.env.get("CUDA_VISIBLE_DEVICES", "").split(",") if x]) for h in heads)
        out[s.name] = n
    return out


def container_args(spec: ProcessSpec, names: dict[str, str]) -> list[str]:
    """The spec's argv for the pod: the image's python, Service names for addresses, all
    interfaces, and no secret flags (those come from the Secret)."""
    exe = spec.argv[0]
    out: list[str] = ["python" if Path(exe).name.startswith("python") else exe]
    args = spec.argv[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--api-keys":
            i += 2
            continue
        if a == "--host" and i + 1 < len(args):
            out += [a, "0.0.0.0"]
            i += 2
            continue
        if a in ("--controller-address", "--worker-address") and i + 1 < len(args):
            u = urlsplit(args[i + 1])
            target = names["controller"] if a == "--controller-address" else names[spec.name]
            out += [a, f"{u.scheme}://{target}:{u.port}"]
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _env(spec: ProcessSpec, opts: KubernetesConfig) -> list[dict]:
    env = [{"name": k, "value": v} for k, v in sorted(spec.env.items()) if k != "CUDA_VISIBLE_DEVICES"]
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    for var, readers in SECRET_ENV.items():
        if readers is None or spec.service in readers:
            env.append({"name": var, "valueFrom": {"secretKeyRef": {
                "name": opts.secret_name, "key": var, "optional": True}}})
    return env


def _labels(spec: ProcessSpec, cluster: str) -> dict[str, str]:
    """A fresh dict each call: shared ones would come out as YAML anchors."""
    return {"app.kubernetes.io/name": "orchestr", "app.kubernetes.io/instance": dns_name(cluster),
            "app.kubernetes.io/component": dns_name(spec.name)}


def deployment(spec: ProcessSpec, opts: KubernetesConfig, names: dict[str, str], gpus: int,
               cluster: str) -> dict:
    worker = spec.service in WORKERS
    requests = {"cpu": opts.worker_cpu_request if worker else opts.cpu_request,
                "memory": opts.worker_memory_request if worker else opts.memory_request}
    limits: dict[str, object] = {}
    if gpus:
        requests["nvidia.com/gpu"] = gpus
        limits["nvidia.com/gpu"] = gpus  # extended resources: request == limit
    container: dict = {
        "name": spec.service.replace("_", "-"),
        "image": opts.images.get(spec.service, opts.image),
        "imagePullPolicy": opts.image_pull_policy,
        "command": container_args(spec, names),
        "env": _env(spec, opts),
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}],
    }
    if spec.port:
        container["ports"] = [{"name": "http", "containerPort": spec.port}]
    if spec.health_url and spec.port:
        path = urlsplit(spec.health_url).path or "/"
        container["readinessProbe"] = {"httpGet": {"path": path, "port": spec.port},
                                       "periodSeconds": 5, "failureThreshold": 3}
        # model loading may take many minutes: liveness only after the pod was once ready
        container["startupProbe"] = {"httpGet": {"path": path, "port": spec.port},
                                     "periodSeconds": 10, "failureThreshold": 90}
        container["livenessProbe"] = {"httpGet": {"path": path, "port": spec.port},
                                      "periodSeconds": 20, "failureThreshold": 3}
    labels = _labels(spec, cluster)
    pod_spec: dict = {"containers": [container], "restartPolicy": "Always",
                      "volumes": [{"name": "config", "configMap": {"name": dns_name("config")}}]}
    if spec.workdir:
        container["workingDir"] = spec.workdir
    if selector := opts.node_selectors.get(spec.node):
        pod_spec["nodeSelector"] = dict(selector)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": names[spec.name], "namespace": opts.namespace, "labels": labels,
                     "annotations": {"orchestr.io/node": spec.node, "orchestr.io/process": spec.name}},
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": _labels(spec, cluster)},
                 "template": {"metadata": {"labels": _labels(spec, cluster)}, "spec": pod_spec}},
    }


def service(spec: ProcessSpec, opts: KubernetesConfig, names: dict[str, str], cluster: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": names[spec.name], "namespace": opts.namespace, "labels": _labels(spec, cluster)},
        "spec": {"selector": _labels(spec, cluster),
                 "ports": [{"name": "http", "port": spec.port, "targetPort": spec.port}]},
    }


def manifests(cfg: DictConfig, specs: list[ProcessSpec], opts: KubernetesConfig) -> list[dict]:
    cluster = str(OmegaConf.select(cfg, "cluster.name") or "orchestr")
    # Ray heads are the seed's way to give vLLM several GPUs on one machine; a pod has its GPUs
    runnable = [s for s in specs if s.service != "ray"]
    gpus = gpu_requests(specs)
    names = {s.name: dns_name(s.name) for s in runnable}
    composed = redact(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    objs: list[dict] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": opts.namespace}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": dns_name("config"), "namespace": opts.namespace},
         "data": {"config.yaml": yaml.safe_dump(composed, sort_keys=False)}},
    ]
    for s in runnable:
        objs.append(deployment(s, opts, names, gpus[s.name], cluster))
        if s.port:
            objs.append(service(s, opts, names, cluster))
    return objs


def write(objs: list[dict], out_dir: Path) -> list[Path]:
    """One file per object, numbered so `kubectl apply -f DIR` creates the namespace first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.yaml"):
        old.unlink()  # a re-render must not leave objects of removed processes behind
    paths = []
    for i, o in enumerate(objs):
        p = out_dir / f"{i:02d}-{o['kind'].lower()}-{o['metadata']['name']}.yaml"
        p.write_text(yaml.safe_dump(o, sort_keys=False))
        paths.append(p)
    return paths


def launch_dry_run(cfg: DictConfig, specs: list[ProcessSpec], launch: LaunchConfig) -> int:
    """`orchestr launch launch.backend=kubernetes`: render only (no cluster is ever touched)."""
    if not launch.dry_run:
        print("[orchestr] launch.backend: kubernetes renders manifests only; add launch.dry_run=true "
              "(or run `orchestr render k8s`) and apply them with kubectl", flush=True)
        return 2
    paths = write(manifests(cfg, specs, launch.kubernetes), Path(launch.kubernetes.output_dir))
    print(f"[orchestr] wrote {len(paths)} manifests to {launch.kubernetes.output_dir}/ "
          f"(kubectl apply -f {launch.kubernetes.output_dir})", file=sys.stderr, flush=True)
    return 0
