"""Config -> process specs.

The plan is pure: it reads the composed config and returns `ProcessSpec`s whose argv are the
services' own command-line flags, so a rendered plan is a list of shell lines a person could
run by hand. Nothing here imports a service module.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, replace

from omegaconf import DictConfig, OmegaConf

from orchestr.config import to_typed
from orchestr.config.flags import to_argv
from orchestr.config.serving import (
    ClusterConfig,
    EngineConfig,
    LaunchConfig,
    ModelConfig,
    NodeConfig,
    ServicesConfig,
    WorkerConfig,
)
from orchestr.errors import ConfigError
from orchestr.launch import secret_files
from orchestr.launch.spec import ProcessSpec
from orchestr.launch.state import state_path
from orchestr.launch.validate import validate_plan

WORKER_MODULES = {
    "hf": "orchestr.services.model_worker",
    "vllm": "orchestr.services.vllm_worker",
    "openvino": "orchestr.services.openvino_worker",
    "multi": "orchestr.services.multi_model_worker",
}


@dataclass
class Endpoints:
    controller: str
    api: str | None
    web: str | None


def _typed(cfg: DictConfig, key: str, schema: type):
    node = OmegaConf.select(cfg, key)
    return to_typed(node, key) if node is not None else schema()


def node_python(node: NodeConfig) -> str:
    if node.python:
        return node.python
    return sys.executable if node.transport == "local" else "python3"


def _bool_flag(flag: str, value: bool) -> list[str]:
    return [flag] if value else []


def _opt(flag: str, value: object | None) -> list[str]:
    return [] if value is None or value == "" else [flag, str(value)]


class Planner:
    def __init__(self, cfg: DictConfig) -> None:
        self.cluster: ClusterConfig = _typed(cfg, "cluster", ClusterConfig)
        self.services: ServicesConfig = _typed(cfg, "services", ServicesConfig)
        self.engine: EngineConfig = _typed(cfg, "engine", EngineConfig)
        launch: LaunchConfig = _typed(cfg, "launch", LaunchConfig)
        self.secrets_dir = secret_files.secrets_dir(state_path(launch.state_file))
        self.default_model: ModelConfig | None = (
            to_typed(cfg.model, "model") if OmegaConf.select(cfg, "model") is not None else None
        )
        self.models: dict[str, ModelConfig] = {
            k: to_typed(v, f"models.{k}") for k, v in (cfg.get("models") or {}).items()
        }

    # ------------------------------------------------------------------ lookups
    def node(self, name: str, key: str) -> NodeConfig:
        if name not in self.cluster.nodes:
            known = ", ".join(sorted(self.cluster.nodes)) or "none"
            raise ConfigError(key, f"unknown node {name!r} (cluster.nodes has: {known})")
        return self.cluster.nodes[name]

    def model(self, name: str | None, key: str) -> ModelConfig:
        if name is None:
            if self.default_model is None:
                raise ConfigError(key, "no model named and no top-level `model` selected")
            return self.default_model
        if name in self.models:
            return self.models[name]
        if self.default_model is not None and name == self.default_model.name:
            return self.default_model
        known = sorted(self.models) + ([self.default_model.name] if self.default_model else [])
        raise ConfigError(key, f"unknown model {name!r} (known: {', '.join(known) or 'none'}); "
                             f"add it with a defaults entry `/model@models.{name}: {name}`")

    def secret_env(self, *extra: str) -> dict[str, str]:
        """The secret files a service reads (the service secret, plus `extra` variables)."""
        return {v: secret_files.secret_path(self.secrets_dir, v) for v in (secret_files.SERVICE_VAR, *extra)}

    def controller_address(self) -> str:
        c = self.services.controller
        node = self.node(c.node, "services.controller.node")
        return f"http://{node.address}:{c.port}"

    # ------------------------------------------------------------------ specs
    def controller_spec(self) -> ProcessSpec:
        c = self.services.controller
        node = self.node(c.node, "services.controller.node")
        argv = [node_python(node), "-m", "orchestr.services.controller",
                *to_argv(replace(c, host=c.host or node.address)), *c.extra_args]
        return ProcessSpec(name="controller", service="controller", node=c.node, argv=argv,
                           env_files=self.secret_env(), port=c.port, health_url=f"http://{node.address}:{c.port}/health",
                           workdir=node.workdir, restart=c.restart, key="services.controller")

    def worker_models(self, name: str, w: WorkerConfig) -> list[ModelConfig]:
        key = f"cluster.workers.{name}"
        if w.models:
            if w.model is not None:
                raise ConfigError(f"{key}.models", "set either `model` or `models`, not both")
            return [self.model(m, f"{key}.models") for m in w.models]
        return [self.model(w.model, f"{key}.model")]

    def worker_spec(self, name: str, w: WorkerConfig) -> ProcessSpec:
        key = f"cluster.workers.{name}"
        node = self.node(w.node, f"{key}.node")
        models = self.worker_models(name, w)
        backend = w.backend or models[0].backend
        if len(models) > 1:
            kind = "multi"
            if backend != "hf":
                raise ConfigError(f"{key}.backend", "a multi-model worker serves `hf` models only")
        else:
            kind = backend
        if kind not in WORKER_MODULES:
            raise ConfigError(f"{key}.backend", f"unknown backend {backend!r} (hf | vllm | openvino)")
        python = w.python or node_python(node)
        addr = f"http://{node.address}:{w.port}"
        argv = [python, "-m", WORKER_MODULES[kind]]
        for m in models:
            argv += ["--model-path", m.path, "--model-names", m.name]
            if kind == "multi":
                # the multi-model worker reads the model options after a --model-path as that
                # model's own (its template, dtype, remote code ...)
                argv += [*self.model_flags(m, kind, w, node), *m.extra_args]
        shared = self.services.worker
        argv += ["--controller-address", self.controller_address(), "--worker-address", addr,
                 *to_argv(replace(shared, host=shared.host or node.address)), *to_argv(w)]
        if kind != "multi":
            argv += [*self.model_flags(models[0], kind, w, node)]
        if kind in ("hf", "multi", "openvino"):
            argv += to_argv(self.engine)
        if kind != "multi":
            argv += models[0].extra_args
        argv += w.extra_args
        env = dict(w.env)
        if w.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in w.gpus)
        return ProcessSpec(name=name, service=WORKER_MODULES[kind].rsplit(".", 1)[1], node=w.node,
                           argv=argv, env=env, env_files=self.secret_env(), port=w.port, health_url=f"{addr}/health",
                           models=[m.name for m in models], depends_on=["controller"],
                           workdir=node.workdir, restart=w.restart, key=key)

    def model_flags(self, m: ModelConfig, kind: str, w: WorkerConfig, node: NodeConfig) -> list[str]:
        num_gpus = len(w.gpus) if w.gpus else (m.num_gpus if node.gpus > 0 else 0)
        device = m.device
        if device == "auto" and node.gpus == 0 and kind != "vllm":
            device = "cpu"
        flags: list[str] = []
        if kind == "vllm":
            flags += _opt("--tokenizer", m.tokenizer)
            flags += _opt("--num-gpus", num_gpus if num_gpus > 1 else None)
            flags += _opt("--dtype", None if m.dtype == "auto" else m.dtype)
            flags += _opt("--quantization", m.quantization)
            flags += _opt("--max-model-len", m.context_length)
            flags += ["--gpu-memory-utilization", str(m.gpu_memory_utilization)]
            flags += _bool_flag("--trust-remote-code", m.trust_remote_code)
            return flags
        if kind == "openvino":
            # int8/int4 IR weights: `quantization: int8|int4`, or `load_8bit: true`
            weights = m.quantization or ("int8" if m.load_8bit else None)
            flags += _opt("--dtype", None if m.dtype == "auto" else m.dtype)
            flags += _opt("--weight-format", weights)
            flags += _opt("--max-model-len", m.context_length)
            flags += _opt("--conv-template", m.conv_template)
            flags += _bool_flag("--trust-remote-code", m.trust_remote_code)
            return flags
        flags += _opt("--tokenizer", m.tokenizer)
        flags += _opt("--device", None if device == "auto" else device)
        flags += _opt("--dtype", None if m.dtype == "auto" else m.dtype)
        flags += _opt("--num-gpus", num_gpus if num_gpus > 1 else None)
        flags += _opt("--max-gpu-memory", m.max_gpu_memory)
        flags += _bool_flag("--load-8bit", m.load_8bit)
        flags += _bool_flag("--cpu-offloading", m.cpu_offloading)
        flags += _opt("--conv-template", m.conv_template)
        flags += _bool_flag("--trust-remote-code", m.trust_remote_code)
        return flags

    def ray_specs(self) -> list[ProcessSpec]:
        specs = []
        for name, r in self.cluster.ray_heads.items():
            node = self.node(r.node, f"cluster.ray_heads.{name}.node")
            env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in r.gpus)} if r.gpus else {}
            argv = ["ray", "start", "--head", "--block", "--port", str(r.port)]
            if r.gpus:
                argv += ["--num-gpus", str(len(r.gpus))]
            specs.append(ProcessSpec(name=name, service="ray", node=r.node, argv=argv, env=env,
                                     port=r.port, workdir=node.workdir, key=f"cluster.ray_heads.{name}"))
        return specs

    def api_spec(self) -> ProcessSpec:
        a = self.services.api
        node = self.node(a.node, "services.api.node")
        argv = [node_python(node), "-m", "orchestr.services.openai_api_server",
                "--controller-address", self.controller_address(),
                *to_argv(replace(a, host=a.host or node.address)), *a.extra_args]
        keys = self.secret_env(secret_files.API_KEYS_VAR) if a.api_keys else self.secret_env()
        return ProcessSpec(name="api", service="openai_api_server", node=a.node, argv=argv,
                           env_files=keys, port=a.port,
                           health_url=f"http://{node.address}:{a.port}/health",
                           depends_on=["controller"], workdir=node.workdir, restart=a.restart,
                           key="services.api")

    def web_spec(self, worker_names: list[str], name: str = "web") -> ProcessSpec:
        s = self.services.web
        key = "services.web"
        if name != "web":  # a replica: the web's settings on its own node, port and log folder
            r = s.replicas[name]
            key = f"services.web.replicas.{name}"
            s = replace(s, node=r.node, port=r.port or s.port, log_dir=r.log_dir or s.log_dir)
        node = self.node(s.node, f"{key}.node")
        argv = [node_python(node), "-m", "orchestr.services.web",
                "--controller-address", self.controller_address(),
                *to_argv(replace(s, host=s.host or node.address)), *s.extra_args]
        auth = self.secret_env(secret_files.WEB_AUTH_VAR) if s.auth else self.secret_env()
        return ProcessSpec(name=name, service="web", node=s.node, argv=argv, env_files=auth, port=s.port,
                           health_url=f"http://{node.address}:{s.port}/",
                           depends_on=["controller", *worker_names], workdir=node.workdir,
                           restart=s.restart, key=key)

    def prometheus_spec(self, specs: list[ProcessSpec]) -> ProcessSpec:
        """A local Prometheus scraping the /metrics of every service in ``specs``."""
        p = self.services.prometheus
        node = self.node(p.node, "services.prometheus.node")
        argv = [node_python(node), "-m", "orchestr.services.prometheus", *to_argv(p)]
        for s in specs:
            if s.port is not None and s.service != "ray" and s.service != "web":
                argv += ["--target", f"{s.service}={self.node(s.node, 'cluster.nodes').address}:{s.port}"]
        # the service secret (for the scrapes) reaches it as every service's does, never on argv
        return ProcessSpec(name="prometheus", service="prometheus", node=p.node, argv=argv,
                           env_files=self.secret_env(), port=p.port,
                           health_url=f"http://{node.address}:{p.port}/-/ready", workdir=node.workdir,
                           restart=p.restart, key="services.prometheus")

    def build(self) -> list[ProcessSpec]:
        if not self.cluster.workers:
            raise ConfigError("cluster.workers", "the cluster defines no workers")
        specs: list[ProcessSpec] = []
        if self.services.controller.enabled:
            specs.append(self.controller_spec())
        specs += self.ray_specs()
        workers = [self.worker_spec(n, w) for n, w in self.cluster.workers.items()]
        for w in workers:
            if w.service == "vllm_worker" and self.cluster.ray_heads:
                w.depends_on += [r for r, h in self.cluster.ray_heads.items() if h.node == w.node]
        specs += workers
        names = [w.name for w in workers]
        if self.services.api.enabled:
            specs.append(self.api_spec())
        if self.services.web.enabled:
            specs.append(self.web_spec(names))
            taken = {s.name for s in specs}
            for rname in self.services.web.replicas:
                if rname in taken:
                    raise ConfigError(f"services.web.replicas.{rname}",
                                      f"{rname!r} is already a process of the deployment: pick another name")
                specs.append(self.web_spec(names, rname))
        if not self.services.controller.enabled:  # one already runs at the configured address
            for s in specs:
                s.depends_on = [d for d in s.depends_on if d != "controller"]
        if self.services.prometheus.enabled:
            specs.append(self.prometheus_spec(specs))
        return specs

    def endpoints(self) -> Endpoints:
        def url(svc, enabled: bool) -> str | None:
            if not enabled:
                return None
            return f"http://{self.node(svc.node, 'services').address}:{svc.port}"

        return Endpoints(controller=self.controller_address(),
                         api=(url(self.services.api, self.services.api.enabled) or "") + "/v1"
                         if self.services.api.enabled else None,
                         web=url(self.services.web, self.services.web.enabled))


def build_plan(cfg: DictConfig) -> list[ProcessSpec]:
    """The deployment's processes in start order (dependencies first)."""
    planner = Planner(cfg)
    specs = planner.build()
    models = {n: planner.worker_models(n, w) for n, w in planner.cluster.workers.items()}
    validate_plan(planner.cluster, models, specs)
    return specs


def render_plan(specs: list[ProcessSpec], cluster: ClusterConfig) -> str:
    """Per-node shell lines, grouped by node, in start order."""
    out: list[str] = []
    for node_name in dict.fromkeys(s.node for s in specs):
        node = cluster.nodes[node_name]
        where = "this machine" if node.transport == "local" else (
            f"ssh {'-p ' + str(node.ssh_port) + ' ' if node.ssh_port != 22 else ''}"
            f"{node.user + '@' if node.user else ''}{node.ssh_host or node.address}")
        out.append(f"# node {node_name} ({node.address}, {where})")
        for s in specs:
            if s.node == node_name:
                cd = f"cd {shlex.quote(s.workdir)} && " if s.workdir else ""
                out.append(f"{cd}{s.command_line()}")
        out.append("")
    return "\n".join(out)


__all__ = ["build_plan", "render_plan", "Planner", "Endpoints"]
