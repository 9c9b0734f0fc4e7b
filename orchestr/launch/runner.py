"""The runner interface: start, watch and stop one process on one node."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol

from orchestr.config.serving import NodeConfig
from orchestr.launch.spec import ProcessSpec


@dataclass
class ProcessRecord:
    """A started process, as the state file keeps it."""

    spec: ProcessSpec
    pid: int
    pgid: int
    log_path: str  # on the node
    started_at: float = field(default_factory=time.time)
    restarts: int = 0

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


class Runner(Protocol):
    def start(self, spec: ProcessSpec, log_path: str) -> ProcessRecord: ...
    def alive(self, record: ProcessRecord) -> bool: ...
    def stop(self, record: ProcessRecord, timeout: float = 15.0) -> None: ...
    def read_log(self, record: ProcessRecord, lines: int = 100) -> str: ...
    def follow_log(self, record: ProcessRecord) -> Iterator[str]: ...
    def close(self) -> None: ...


def runner_for(node_name: str, node: NodeConfig) -> Runner:
    if node.transport == "local":
        from orchestr.launch.local import LocalRunner

        return LocalRunner(node_name, node)
    if node.transport == "ssh":
        from orchestr.launch.ssh import SSHRunner

        return SSHRunner(node_name, node)
    if node.transport == "slurm":  # launch.backend=slurm
        from orchestr.launch.slurm import SlurmRunner

        return SlurmRunner(node_name, node)
    if node.transport == "ray":  # launch.backend=ray
        from orchestr.launch.ray_backend import RayRunner

        return RayRunner(node_name, node)
    raise ValueError(f"cluster.nodes.{node_name}.transport: unknown transport {node.transport!r}")
