"""Cross-field checks of a plan before anything starts (ports, GPUs, nodes, addresses); every
error names the config key at fault. Single values are checked by the schemas themselves."""

from __future__ import annotations

from orchestr.config.serving import ClusterConfig, ModelConfig
from orchestr.errors import ConfigError
from orchestr.launch.backends import check_transport
from orchestr.launch.spec import ProcessSpec

# worker name -> the models it serves (the Planner resolves them)
WorkerModels = dict[str, list[ModelConfig]]


def validate_plan(cluster: ClusterConfig, worker_models: WorkerModels, specs: list[ProcessSpec]) -> None:
    for name, node in cluster.nodes.items():
        check_transport(name, node)
    _check_addresses(cluster, specs)
    # two services on one port of one node
    seen_ports: dict[tuple[str, int], str] = {}
    for s in specs:
        if s.port is None:
            continue
        if not 0 < s.port < 65536:
            raise ConfigError(f"{s.key}.port", f"port {s.port} is not a TCP port (1-65535)")
        where = (s.node, s.port)
        if where in seen_ports:
            raise ConfigError(f"{s.key}.port", f"port {s.port} on node {s.node!r} is already used by {seen_ports[where]!r}")
        seen_ports[where] = s.name
    # GPUs: in range for the node, and never given to two processes on one node
    gpu_owner: dict[tuple[str, int], str] = {}
    claims: list[tuple[str, str, list[int], str]] = []
    for wname, w in cluster.workers.items():
        if w.gpus is not None:
            claims.append((wname, w.node, list(w.gpus), f"cluster.workers.{wname}.gpus"))
    for rname, r in cluster.ray_heads.items():
        claims.append((rname, r.node, list(r.gpus), f"cluster.ray_heads.{rname}.gpus"))
    claims += _implicit_gpu_claims(cluster, worker_models)  # last: a clash then names the implicit one
    for owner, node_name, gpus, key in claims:
        node = cluster.nodes[node_name]
        for g in gpus:
            if g < 0 or g >= node.gpus:
                raise ConfigError(key, f"GPU {g} does not exist on node {node_name!r} (it has {node.gpus})")
            if (node_name, g) in gpu_owner:
                raise ConfigError(key, f"GPU {g} on node {node_name!r} is already given to {gpu_owner[(node_name, g)]!r}")
            gpu_owner[(node_name, g)] = owner
    # a worker needing several GPUs must get them (vLLM on a Ray head may use the head's GPUs)
    for wname, w in cluster.workers.items():
        node = cluster.nodes[w.node]
        for m in worker_models[wname]:
            if node.gpus and m.num_gpus > node.gpus:
                raise ConfigError(f"cluster.workers.{wname}.model",
                                f"model {m.name!r} needs {m.num_gpus} GPUs; node {w.node!r} has {node.gpus}")
    for s in specs:
        for dep in s.depends_on:
            if dep not in {x.name for x in specs}:
                raise ConfigError(s.key, f"depends on {dep!r}, which is not part of the plan")


_LOOPBACK = ("localhost", "::1")


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in _LOOPBACK


def _check_addresses(cluster: ClusterConfig, specs: list[ProcessSpec]) -> None:
    """A node's address is where the other services reach it. A wildcard (0.0.0.0) is a bind
    address, not one to connect to; across machines a loopback address would send workers'
    registrations (and the controller's requests) to the wrong machine."""
    used = {s.node for s in specs}
    nodes = {n: cluster.nodes[n] for n in sorted(used)}
    addresses = {n.address for n in nodes.values()}
    for name, node in nodes.items():
        if not node.address:
            raise ConfigError(f"cluster.nodes.{name}.address", "empty address")
        if node.address in ("0.0.0.0", "::", "[::]"):
            raise ConfigError(f"cluster.nodes.{name}.address",
                            f"{node.address!r} is a bind-all address, not one other services can connect "
                            "to: give the node's own address (127.0.0.1 for this machine)")
        if len(addresses) > 1 and _is_loopback(node.address):
            others = ", ".join(sorted(a for a in addresses if a != node.address))
            raise ConfigError(f"cluster.nodes.{name}.address",
                            f"{node.address!r} is this node's loopback, but the cluster spans other "
                            f"addresses ({others}): give the address the other nodes reach it at")


def _implicit_gpu_claims(cluster: ClusterConfig, worker_models: WorkerModels) -> list[tuple[str, str, list[int], str]]:
    """GPUs that workers without `gpus` will use on a GPU node, so clashes are caught too.

    Such a worker sees every GPU and takes the first ones it needs, unless it is a vLLM worker
    riding a Ray head on its node (the seed's `ray start --head` + `--num-gpus 2`), which then
    must hold enough GPUs. A worker given fewer GPUs than its model needs is an error too.
    """
    ray_load: dict[str, int] = {}
    implicit: list[tuple[str, str, list[int], str]] = []
    for wname, w in cluster.workers.items():
        key = f"cluster.workers.{wname}.gpus"
        node = cluster.nodes[w.node]
        models = worker_models[wname]
        need = max(m.num_gpus for m in models)
        if w.gpus is not None:
            if node.gpus and 0 < len(w.gpus) < need:
                raise ConfigError(key, f"model {max(models, key=lambda m: m.num_gpus).name!r} needs {need} "
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
                raise ConfigError(key, f"the vLLM workers on Ray head {hname!r} need {ray_load[hname]} GPUs; "
                                     f"it has {len(head.gpus)} (cluster.ray_heads.{hname}.gpus)")
            continue
        if need <= node.gpus:  # (more than the node has is reported below, with its own message)
            implicit.append((wname, w.node, list(range(need)), key))
    return implicit
