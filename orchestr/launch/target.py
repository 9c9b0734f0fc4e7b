"""`launch.backend`: which backend places the plan's processes.

The plan (process specs) is the same for every backend; this only decides who runs it. Unset,
each node keeps its own `transport` (local | ssh). `slurm` and `ray` send every node's processes
to that scheduler, which restarts them itself (`SCHEDULERS`: no orchestr supervisor watches
them). `kubernetes` renders manifests only (orchestr.launch.kubernetes).
"""

from __future__ import annotations

from dataclasses import asdict, replace

from orchestr.config.backends import BACKEND_NAMES
from orchestr.config.serving import LaunchConfig, NodeConfig
from orchestr.errors import ConfigError
from orchestr.launch.spec import ProcessSpec

SCHEDULERS = ("slurm", "ray")


def check_backend(launch: LaunchConfig) -> str | None:
    if launch.backend is not None and launch.backend not in BACKEND_NAMES:
        raise ConfigError("launch.backend", f"unknown backend {launch.backend!r} ({' | '.join(BACKEND_NAMES)})")
    return launch.backend


def backend_nodes(launch: LaunchConfig, nodes: dict[str, NodeConfig]) -> dict[str, NodeConfig]:
    """The cluster's nodes as the chosen backend runs them (the state file records these)."""
    backend = check_backend(launch)
    if backend is None or backend == "kubernetes":
        return nodes
    options = asdict(getattr(launch, backend)) if backend in SCHEDULERS else {}
    return {name: replace(n, transport=backend, backend_options=options) for name, n in nodes.items()}


def backend_specs(launch: LaunchConfig, specs: list[ProcessSpec]) -> list[ProcessSpec]:
    """Backend-specific trims of the plan: on Ray the cluster exists already, so the seed's
    `ray start --head` processes go and vLLM workers join that cluster instead."""
    if launch.backend != "ray":
        return specs
    heads = {s.name for s in specs if s.service == "ray"}
    out = []
    for s in specs:
        if s.name in heads:
            continue
        s.depends_on = [d for d in s.depends_on if d not in heads]
        if s.service == "vllm_worker":
            s.env.setdefault("RAY_ADDRESS", launch.ray.address)
        out.append(s)
    return out


def scheduler_restarts(launch: LaunchConfig) -> bool:
    return launch.backend in SCHEDULERS
