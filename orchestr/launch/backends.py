"""Backends: what places, starts, watches and stops a plan's processes on a node.

A node's `transport` names its backend in `BACKENDS`. A backend is a class built as
`Backend(node_name, node_config)` that implements `Runner`; it is registered by name with the
dotted path of the class, imported only when a node uses it (so `orchestr status` on a local
deployment never loads paramiko, and a new backend adds one `register` line, not an import here).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from hydra.utils import get_class

from orchestr.config.serving import NodeConfig
from orchestr.errors import ConfigError
from orchestr.launch.spec import ProcessRecord, ProcessSpec


class Runner(Protocol):
    def start(self, spec: ProcessSpec, log_path: str) -> ProcessRecord: ...
    def alive(self, record: ProcessRecord) -> bool: ...
    def stop(self, record: ProcessRecord, timeout: float = 15.0) -> None: ...
    def read_log(self, record: ProcessRecord, lines: int = 100) -> str: ...
    def follow_log(self, record: ProcessRecord) -> Iterator[str]: ...
    # delete what `start` copied to the node of the deployment's secret files (folder: theirs here)
    def remove_files(self, folder: Path) -> None: ...
    # copy the node's files `pattern` in `folder` (a node's path) into `into` here (how day-2
    # commands read an SSH node's vote logs; shared-filesystem backends never need it)
    def fetch_files(self, folder: str, pattern: str, into: Path) -> int: ...
    def close(self) -> None: ...


# backend name (a node's `transport`) -> dotted path of its Runner class
BACKENDS: dict[str, str] = {}


def register(name: str, target: str) -> None:
    """Make `cluster.nodes.X.transport=name` run its processes with the class at `target`."""
    BACKENDS[name] = target


register("local", "orchestr.launch.local.LocalRunner")
register("ssh", "orchestr.launch.ssh.SSHRunner")
register("slurm", "orchestr.launch.slurm.SlurmRunner")  # launch.backend=slurm
register("ray", "orchestr.launch.ray_backend.RayRunner")  # launch.backend=ray


def check_transport(node_name: str, node: NodeConfig) -> None:
    if node.transport not in BACKENDS:
        raise ConfigError(f"cluster.nodes.{node_name}.transport",
                          f"unknown transport {node.transport!r} ({' | '.join(BACKENDS)})")


def preflight(nodes: dict[str, NodeConfig], specs: list[ProcessSpec]) -> None:
    """Before anything starts: can each backend place its share of the plan? A backend class
    may define `preflight(nodes, specs)` (a classmethod) that raises a `ConfigError` naming the
    key to change and what exists instead."""
    by_backend: dict[str, dict[str, NodeConfig]] = {}
    for name, node in nodes.items():
        check_transport(name, node)
        by_backend.setdefault(node.transport, {})[name] = node
    for transport, group in by_backend.items():
        check = getattr(get_class(BACKENDS[transport]), "preflight", None)
        if check is not None:
            check(group, [s for s in specs if s.node in group])


def runner_for(node_name: str, node: NodeConfig) -> Runner:
    check_transport(node_name, node)
    return get_class(BACKENDS[node.transport])(node_name, node)


class Runners:
    """One runner per node, opened lazily (an SSH connection is opened once per node)."""

    def __init__(self, nodes: dict[str, NodeConfig]) -> None:
        self.nodes = nodes
        self._open: dict[str, Runner] = {}

    def __getitem__(self, node: str) -> Runner:
        if node not in self._open:
            self._open[node] = runner_for(node, self.nodes[node])
        return self._open[node]

    def close(self) -> None:
        for r in self._open.values():
            r.close()
        self._open.clear()
