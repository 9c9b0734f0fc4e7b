"""Checks a plan before anything starts; every error names the config key at fault."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestr.launch.spec import ProcessSpec

if TYPE_CHECKING:
    from orchestr.launch.plan import Planner

_SERVICE_KEYS = {"controller": "services.controller.port", "api": "services.api.port",
                 "web": "services.web.port"}


def _port_key(spec: ProcessSpec) -> str:
    if spec.name in _SERVICE_KEYS:
        return _SERVICE_KEYS[spec.name]
    if spec.service == "ray":
        return f"cluster.ray_heads.{spec.name}.port"
    return f"cluster.workers.{spec.name}.port"


def validate_plan(planner: Planner, specs: list[ProcessSpec]) -> None:
    from orchestr.launch.plan import PlanError

    cluster = planner.cluster
    for name, node in cluster.nodes.items():
        if node.transport not in ("local", "ssh"):
            raise PlanError(f"cluster.nodes.{name}.transport", f"unknown transport {node.transport!r} (local | ssh)")
        if node.known_hosts not in ("strict", "accept-new", "ignore"):
            raise PlanError(f"cluster.nodes.{name}.known_hosts",
                            f"unknown policy {node.known_hosts!r} (strict | accept-new | ignore)")
    # two services on one port of one node
    seen_ports: dict[tuple[str, int], str] = {}
    for s in specs:
        if s.port is None:
            continue
        where = (s.node, s.port)
        if where in seen_ports:
            raise PlanError(_port_key(s), f"port {s.port} on node {s.node!r} is already used by {seen_ports[where]!r}")
        seen_ports[where] = s.name
    # GPUs: in range for the node, and never given to two processes on one node
    gpu_owner: dict[tuple[str, int], str] = {}
    claims: list[tuple[str, str, list[int], str]] = []
    for wname, w in cluster.workers.items():
        if w.gpus is not None:
            claims.append((wname, w.node, list(w.gpus), f"cluster.workers.{wname}.gpus"))
    for rname, r in cluster.ray_heads.items():
        claims.append((rname, r.node, list(r.gpus), f"cluster.ray_heads.{rname}.gpus"))
    for owner, node_name, gpus, key in claims:
        node = cluster.nodes[node_name]
        for g in gpus:
            if g < 0 or g >= node.gpus:
                raise PlanError(key, f"GPU {g} does not exist on node {node_name!r} (it has {node.gpus})")
            if (node_name, g) in gpu_owner:
                raise PlanError(key, f"GPU {g} on node {node_name!r} is already given to {gpu_owner[(node_name, g)]!r}")
            gpu_owner[(node_name, g)] = owner
    # a worker needing several GPUs must get them (vLLM on a Ray head may use the head's GPUs)
    for wname, w in cluster.workers.items():
        node = cluster.nodes[w.node]
        for m in planner.worker_models(wname, w):
            if node.gpus and m.num_gpus > node.gpus:
                raise PlanError(f"cluster.workers.{wname}.model",
                                f"model {m.name!r} needs {m.num_gpus} GPUs; node {w.node!r} has {node.gpus}")
    for s in specs:
        for dep in s.depends_on:
            if dep not in {x.name for x in specs}:
                raise PlanError(f"cluster.workers.{s.name}", f"depends on {dep!r}, which is not part of the plan")
