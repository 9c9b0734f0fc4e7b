"""The process spec: one service instance, rendered from config, ready to run by hand or by a runner."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field

from orchestr.config.serving import RestartPolicy


@dataclass
class ProcessSpec:
    name: str  # unique in the deployment: controller, worker-0, api, web, ray-head-node-01 ...
    service: str  # controller | model_worker | vllm_worker | multi_model_worker | openai_api_server | web | ray
    node: str  # key of cluster.nodes
    argv: list[str]  # full command line; argv[0] is the interpreter
    env: dict[str, str] = field(default_factory=dict)  # only what the plan sets (CUDA_VISIBLE_DEVICES ...)
    port: int | None = None
    health_url: str | None = None  # GET returns 2xx when up
    models: list[str] = field(default_factory=list)  # model names a worker must register
    depends_on: list[str] = field(default_factory=list)  # names that must be healthy first
    workdir: str | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    def command_line(self) -> str:
        """The shell line a person could paste on the node: env assignments then argv, all quoted."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        cmd = shlex.join(self.argv)
        return f"{env} {cmd}" if env else cmd

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ProcessSpec:
        d = dict(d)
        d["restart"] = RestartPolicy(**d.get("restart", {}))
        return cls(**d)
