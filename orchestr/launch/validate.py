"""Checks a plan before anything starts; every error names the config key at fault."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestr.launch.spec import ProcessSpec

if TYPE_CHECKING:
    from orchestr.launch.plan import Planner

_SERVICE_KEYS = {"controller": "services.controller.port", "api": "services.api.port",
                 "web": "services.web.port", "prometheus": "services.prometheus.port"}


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
    _check_restart_policies(planner)
    _check_addresses(planner, specs)
    # two services on one port of one node
    seen_ports: dict[tuple[str, int], str] = {}
    for s in specs:
        if s.port is None:
            continue
        if not 0 < s.port < 65536:
            raise PlanError(_port_key(s), f"port {s.port} is not a TCP port (1-65535)")
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
    claims += _implicit_gpu_claims(planner)  # last: a clash then names the implicit one
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


_RESTART_POLICIES = ("no", "on-failure", "always")
_LOOPBACK = ("localhost", "::1")


def _check_restart_policies(planner: Planner) -> None:
    from orchestr.launch.plan import PlanError

    svc = planner.services
    policies = {f"services.{n}.restart": getattr(svc, n).restart for n in ("controller", "api", "web")}
    policies |= {f"cluster.workers.{n}.restart": w.restart for n, w in planner.cluster.workers.items()}
    for key, r in policies.items():
        if r.policy not in _RESTART_POLICIES:
            raise PlanError(f"{key}.policy", f"unknown policy {r.policy!r} ({' | '.join(_RESTART_POLICIES)})")
        if r.max_restarts < 0 or r.backoff_s < 0 or r.backoff_max_s < 0:
            raise PlanError(key, "max_restarts, backoff_s and backoff_max_s must not be negative")


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in _LOOPBACK


def _check_addresses(planner: Planner, specs: list[ProcessSpec]) -> None:
    """Across machines, every node needs an address the others can reach: a loopback address
    would send workers' registrations (and the controller's requests) to the wrong machine."""
    from orchestr.launch.plan import PlanError

    used = {s.node for s in specs}
    nodes = {n: planner.cluster.nodes[n] for n in sorted(used)}
    addresses = {n.address for n in nodes.values()}
    if len(addresses) < 2:
        return
    for name, node in nodes.items():
        if not node.address:
            raise PlanError(f"cluster.nodes.{name}.address", "empty address")
        if _is_loopback(node.address):
            others = ", ".join(sorted(a for a in addresses if a != node.address))
            raise PlanError(f"cluster.nodes.{name}.address",
                            f"{node.address!r} is this node's loopback, but the cluster spans other "
                            f"addresses ({others}): give the address the other nodes reach it at")


def _implicit_gpu_claims(planner: Planner) -> list[tuple[str, str, list[int], str]]:
    """GPUs that workers without `gpus` will use on a GPU node, so clashes are caught too.

    Such a worker sees every GPU and takes the first ones it needs, unless it is a vLLM worker
    riding a Ray head on its node (the seed's `ray start --head` + `--num-gpus 2`), which then
    must hold enough GPUs. A worker given fewer GPUs than its model needs is an error too.
    """
    from orchestr.launch.plan import PlanError

    cluster = planner.cluster
    ray_load: dict[str, int] = {}
    implicit: list[tuple[str, str, list[int], str]] = []
    for wname, w in cluster.workers.items():
        key = f"cluster.workers.{wname}.gpus"
        node = cluster.nodes[w.node]
        models = planner.worker_models(wname, w)
        need = max(m.num_gpus for m in models)
        if w.gpus is not None:
            if node.gpus and 0 < len(w.gpus) < need:
                raise PlanError(key, f"model {max(models, key=lambda m: m.num_gpus).name!r} needs {need} "
                                     f"GPUs; the worker is given {len(w.gpus)} ({list(w.gpus)})")
            continue
        if node.gpus == 0:
            continue
        backend = w.backend or models[0].backend
        heads = [(n, r) for n, r in cluster.ray_heads.items() if r.node == w.node]
        if backend == "vllm" and len(models) == 1 and heads:
            hname, head = heads[0]
            ray_load[hname] = ray_load.get(hname, 0) + need
            if ray_load[hname] > len(head.gpus):
                raise PlanError(key, f"the vLLM workers on Ray head {hname!r} need {ray_load[hname]} GPUs; "
                                     f"it has {len(head.gpus)} (cluster.ray_heads.{hname}.gpus)")
            continue
        if need <= node.gpus:  # (more than the node has is reported below, with its own message)
            implicit.append((wname, w.node, list(range(need)), key))
    return implicit
