"""Config -> process specs.

The plan is pure: it reads the composed config and returns `ProcessSpec`s whose argv are the
services' own command-line flags, so a rendered plan is a list of shell lines a person could
run by hand. Nothing here imports a service module.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from orchestr.config.serving import (
    ClusterConfig,
    EngineConfig,
    ModelConfig,
    NodeConfig,
    RestartPolicy,
    ServicesConfig,
    WorkerConfig,
)
from orchestr.launch.spec import ProcessSpec

WORKER_MODULES = {
    "hf": "orchestr.services.model_worker",
    "vllm": "orchestr.services.vllm_worker",
    "openvino": "orchestr.services.openvino_worker",
    "multi": "orchestr.services.multi_model_worker",
}


class PlanError(ValueError):
    """A config that cannot be turned into a deployment; the message names the config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass
class Endpoints:
    controller: str
    api: str | None
    web: str | None


def _typed(cfg: DictConfig, key: str, schema: type):
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_object(node) if node is not None else schema()


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
        self.default_model: ModelConfig | None = (
            OmegaConf.to_object(cfg.model) if OmegaConf.select(cfg, "model") is not None else None
        )
        self.models: dict[str, ModelConfig] = {
            k: OmegaConf.to_object(v) for k, v in (cfg.get("models") or {}).items()
        }

    # ------------------------------------------------------------------ lookups
    def node(self, name: str, key: str) -> NodeConfig:
        if name not in self.cluster.nodes:
            known = ", ".join(sorted(self.cluster.nodes)) or "none"
            raise PlanError(key, f"unknown node {name!r} (cluster.nodes has: {known})")
        return self.cluster.nodes[name]

    def model(self, name: str | None, key: str) -> ModelConfig:
        if name is None:
            if self.default_model is None:
                raise PlanError(key, "no model named and no top-level `model` selected")
            return self.default_model
        if name in self.models:
            return self.models[name]
        if self.default_model is not None and name == self.default_model.name:
            return self.default_model
        known = sorted(self.models) + ([self.default_model.name] if self.default_model else [])
        raise PlanError(key, f"unknown model {name!r} (known: {', '.join(known) or 'none'}); "
                             f"add it with a defaults entry `/model@models.{name}: {name}`")

    def controller_address(self) -> str:
        c = self.services.controller
        node = self.node(c.node, "services.controller.node")
        return f"http://{node.address}:{c.port}"

    # ------------------------------------------------------------------ specs
    def controller_spec(self) -> ProcessSpec:
        c = self.services.controller
        node = self.node(c.node, "services.controller.node")
        argv = [node_python(node), "-m", "orchestr.services.controller",
                "--host", c.host, "--port", str(c.port),
                "--dispatch-method", c.dispatch_method,
                "--heart-beat-expiration", str(c.heart_beat_expiration), *c.extra_args]
        return ProcessSpec(name="controller", service="controller", node=c.node, argv=argv,
                           port=c.port, health_url=f"http://{node.address}:{c.port}/health",
                           workdir=node.workdir, restart=c.restart)

    def worker_models(self, name: str, w: WorkerConfig) -> list[ModelConfig]:
        key = f"cluster.workers.{name}"
        if w.models:
            if w.model is not None:
                raise PlanError(f"{key}.models", "set either `model` or `models`, not both")
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
                raise PlanError(f"{key}.backend", "a multi-model worker serves `hf` models only")
        else:
            kind = backend
        if kind not in WORKER_MODULES:
            raise PlanError(f"{key}.backend", f"unknown backend {backend!r} (hf | vllm | openvino)")
        python = w.python or node_python(node)
        addr = f"http://{node.address}:{w.port}"
        argv = [python, "-m", WORKER_MODULES[kind]]
        for m in models:
            argv += ["--model-path", m.path, "--model-names", m.name]
            if kind == "multi":
                # the multi-model worker reads the model options after a --model-path as that
                # model's own (its template, dtype, remote code ...)
                argv += [*self.model_flags(m, kind, w, node), *m.extra_args]
        argv += ["--controller-address", self.controller_address(), "--worker-address", addr,
                 "--host", self.services.worker.host, "--port", str(w.port),
                 "--limit-worker-concurrency", str(w.limit_worker_concurrency),
                 "--heart-beat-interval", str(self.services.worker.heart_beat_interval)]
        if kind != "multi":
            argv += [*self.model_flags(models[0], kind, w, node)]
        if kind in ("hf", "multi", "openvino"):
            argv += self.engine_flags()
        if kind != "multi":
            argv += models[0].extra_args
        argv += w.extra_args
        env = dict(w.env)
        if w.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in w.gpus)
        return ProcessSpec(name=name, service=WORKER_MODULES[kind].rsplit(".", 1)[1], node=w.node,
                           argv=argv, env=env, port=w.port, health_url=f"{addr}/health",
                           models=[m.name for m in models], depends_on=["controller"],
                           workdir=node.workdir, restart=w.restart)

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

    def engine_flags(self) -> list[str]:
        e = self.engine
        threads = _opt("--num-threads", e.num_threads)
        if not e.batching:
            return ["--no-batching", *threads]
        return ["--max-batch-size", str(e.max_batch_size),
                "--max-num-batched-tokens", str(e.max_num_batched_tokens),
                "--kv-cache-tokens", str(e.kv_cache_tokens), *threads]

    def ray_specs(self) -> list[ProcessSpec]:
        specs = []
        for name, r in self.cluster.ray_heads.items():
            node = self.node(r.node, f"cluster.ray_heads.{name}.node")
            env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in r.gpus)} if r.gpus else {}
            argv = ["ray", "start", "--head", "--block", "--port", str(r.port)]
            if r.gpus:
                argv += ["--num-gpus", str(len(r.gpus))]
            specs.append(ProcessSpec(name=name, service="ray", node=r.node, argv=argv, env=env,
                                     port=r.port, workdir=node.workdir))
        return specs

    def api_spec(self, worker_names: list[str]) -> ProcessSpec:
        a = self.services.api
        node = self.node(a.node, "services.api.node")
        argv = [node_python(node), "-m", "orchestr.services.openai_api_server",
                "--host", a.host, "--port", str(a.port),
                "--controller-address", self.controller_address()]
        if a.api_keys:
            argv += ["--api-keys", ",".join(a.api_keys)]
        argv += a.extra_args
        return ProcessSpec(name="api", service="openai_api_server", node=a.node, argv=argv, port=a.port,
                           health_url=f"http://{node.address}:{a.port}/health",
                           depends_on=["controller"], workdir=node.workdir, restart=a.restart)

    def web_spec(self, worker_names: list[str]) -> ProcessSpec:
        s = self.services.web
        node = self.node(s.node, "services.web.node")
        argv = [node_python(node), "-m", "orchestr.services.web",
                "--host", s.host, "--port", str(s.port),
                "--controller-address", self.controller_address(),
                *s.cli_flags(), *s.extra_args]  # --mode, --log-dir and the rest of services.web
        return ProcessSpec(name="web", service="web", node=s.node, argv=argv, port=s.port,
                           health_url=f"http://{node.address}:{s.port}/",
                           depends_on=["controller", *worker_names], workdir=node.workdir,
                           restart=s.restart)

    def prometheus_spec(self, specs: list[ProcessSpec]) -> ProcessSpec:
        """A local Prometheus scraping the /metrics of every service in ``specs``."""
        p = self.services.prometheus
        node = self.node(p.node, "services.prometheus.node")
        argv = [node_python(node), "-m", "orchestr.services.prometheus", "--host", p.host, "--port", str(p.port),
                "--scrape-interval", f"{p.scrape_interval_s:g}", "--data-dir", p.data_dir, "--binary", p.binary]
        for s in specs:
            if s.port is not None and s.service != "ray" and s.service != "web":
                argv += ["--target", f"{s.service}={self.node(s.node, 'cluster.nodes').address}:{s.port}"]
        return ProcessSpec(name="prometheus", service="prometheus", node=p.node, argv=argv, port=p.port,
                           health_url=f"http://{node.address}:{p.port}/-/ready", workdir=node.workdir,
                           restart=p.restart)

    def build(self) -> list[ProcessSpec]:
        if not self.cluster.workers:
            raise PlanError("cluster.workers", "the cluster defines no workers")
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
            specs.append(self.api_spec(names))
        if self.services.web.enabled:
            specs.append(self.web_spec(names))
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
    from orchestr.launch.validate import validate_plan

    planner = Planner(cfg)
    specs = planner.build()
    validate_plan(planner, specs)
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


__all__ = ["build_plan", "render_plan", "Planner", "PlanError", "Endpoints", "RestartPolicy"]
