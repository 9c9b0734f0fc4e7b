"""The process spec (one service instance, rendered from config, ready to run by hand or by a
backend) and the record of a started one."""

from __future__ import annotations

import shlex
import time
from dataclasses import asdict, dataclass, field

from orchestr.config.serving import RestartPolicy


@dataclass
class ProcessSpec:
    name: str  # unique in the deployment: controller, worker-0, api, web, ray-head-node-01 ...
    service: str  # controller | model_worker | vllm_worker | multi_model_worker | openai_api_server | web | ray
    node: str  # key of cluster.nodes
    argv: list[str]  # full command line; argv[0] is the interpreter
    env: dict[str, str] = field(default_factory=dict)  # only what the plan sets (CUDA_VISIBLE_DEVICES ...)
    # variable -> a 0600 file on the launching machine (a secret): the backend puts the file on
    # the node and sets the variable to its path there, so the value never reaches argv
    env_files: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    health_url: str | None = None  # GET returns 2xx when up
    models: list[str] = field(default_factory=list)  # model names a worker must register
    depends_on: list[str] = field(default_factory=list)  # names that must be healthy first
    workdir: str | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    key: str = ""  # the config section it came from (services.api, cluster.workers.w0 ...)

    def command_line(self) -> str:
        """The shell line a person could paste on the node: env assignments then argv, all quoted."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted({**self.env, **self.env_files}.items()))
        cmd = shlex.join(self.argv)
        return f"{env} {cmd}" if env else cmd

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ProcessSpec:
        d = dict(d)
        d["restart"] = RestartPolicy(**d.get("restart", {}))
        return cls(**d)


@dataclass
class ProcessRecord:
    """A started process, as the state file keeps it."""

    spec: ProcessSpec
    pid: int
    pgid: int
    log_path: str  # on the node
    started_at: float = field(default_factory=time.time)
    restarts: int = 0  # over the deployment's life
    failures: list[float] = field(default_factory=list)  # when it died, within the restart window
    last_exit: str | None = None  # what the watcher saw when it last died

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def node(self) -> str:
        return self.spec.node

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ProcessRecord:
        d = dict(d)
        d["spec"] = ProcessSpec.from_dict(d["spec"])
        return cls(**d)
