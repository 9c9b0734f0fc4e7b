"""Per-node training command lines over the `cluster` nodes: `torchrun` or `accelerate launch`.

Every node runs the same `orchestr train` config; the launcher gives each process its rank, and
the process (seeing RANK/LOCAL_RANK) trains instead of rendering again. The first training node
is the rendezvous master. FSDP / DeepSpeed ZeRO come from `train.distributed.strategy`, applied
by the trainer inside each process, so both launchers get the same config.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any

from orchestr.errors import UserError

LAUNCHERS = ("torchrun", "accelerate")
STRATEGIES = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
# overrides that only concern the rendering process, not the per-node training processes
_LOCAL_ONLY = ("launch.dry_run", "hydra.")


class DistError(UserError, ValueError):
    """A distributed-training key is wrong; the message names it."""


@dataclass
class NodeCommand:
    node: str
    address: str
    rank: int
    nproc: int
    argv: list[str]
    env: dict[str, str]
    workdir: str | None

    def line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        cmd = shlex.join(self.argv)
        cd = f"cd {shlex.quote(self.workdir)} && " if self.workdir else ""
        return f"{cd}{env + ' ' if env else ''}{cmd}"


def in_distributed_process() -> bool:
    """True inside a process a launcher started (it set the ranks)."""
    return "LOCAL_RANK" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def training_nodes(cluster: Any, dist: Any) -> list[str]:
    if dist.nodes:
        names = list(dist.nodes)
    else:  # the GPU nodes, or every node when none has GPUs
        names = [n for n, node in cluster.nodes.items() if node.gpus] or list(cluster.nodes)
    unknown = [n for n in names if n not in cluster.nodes]
    if unknown:
        raise DistError(f"train.distributed.nodes: {unknown} not in cluster.nodes ({sorted(cluster.nodes)})")
    if not names:
        raise DistError("cluster.nodes is empty: no node to train on")
    return names


def is_multi_process(cluster: Any, dist: Any) -> bool:
    """Whether the config asks for more than one training process (several nodes or GPUs)."""
    names = training_nodes(cluster, dist)
    return len(names) > 1 or _nproc(cluster.nodes[names[0]], dist) > 1


def _nproc(node: Any, dist: Any) -> int:
    return int(dist.nproc_per_node or max(int(node.gpus or 0), 1))


def local_overrides(overrides: list[str]) -> list[str]:
    """The overrides a training process needs (not the rendering-only ones)."""
    return [a for a in overrides if not a.lstrip("+~").startswith(_LOCAL_ONLY)]


def render_commands(cluster: Any, dist: Any, overrides: list[str]) -> list[NodeCommand]:
    if dist.launcher not in LAUNCHERS:
        raise DistError(f"train.distributed.launcher={dist.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    if dist.strategy not in STRATEGIES:
        raise DistError(f"train.distributed.strategy={dist.strategy!r}: expected one of {', '.join(STRATEGIES)}")
    names = training_nodes(cluster, dist)
    nodes = [cluster.nodes[n] for n in names]
    nprocs = [_nproc(n, dist) for n in nodes]
    world = sum(nprocs)
    master = nodes[0].address
    port = str(dist.master_port)
    args = local_overrides(overrides)
    out = []
    for rank, (name, node, nproc) in enumerate(zip(names, nodes, nprocs, strict=True)):
        python = node.python or ("python3" if node.transport == "ssh" else "python")
        if dist.launcher == "torchrun":
            launcher = [python, "-m", "torch.distributed.run", "--nnodes", str(len(nodes)),
                        "--node-rank", str(rank), "--nproc-per-node", str(nproc),
                        "--master-addr", master, "--master-port", port]  # fmt: skip
        else:
            launcher = [python, "-m", "accelerate.commands.launch", "--num_machines", str(len(nodes)),
                        "--machine_rank", str(rank), "--num_processes", str(world),
                        "--main_process_ip", master, "--main_process_port", port]  # fmt: skip
            if world > 1:
                launcher.append("--multi_gpu")
        env = dict(node.env or {})
        if node.gpus:
            env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(nproc)))
        argv = [*launcher, "-m", "orchestr.train.app", *args]
        out.append(NodeCommand(name, node.address, rank, nproc, argv, env, node.workdir))
    return out


def render_text(commands: list[NodeCommand], dist: Any) -> str:
    world = sum(c.nproc for c in commands)
    lines = [f"# {dist.launcher}, strategy {dist.strategy}: {len(commands)} node(s), world size {world}, "
             f"master {commands[0].address}:{dist.master_port}"]  # fmt: skip
    for c in commands:
        lines += ["", f"# node {c.node} ({c.address}): node rank {c.rank}, {c.nproc} process(es)", c.line()]
    return "\n".join(lines)


def strategy_args(strategy: str, fsdp_config: dict[str, str]) -> dict[str, Any]:
    """TrainingArguments for the sharding strategy (inside each training process)."""
    if strategy == "ddp":
        return {}
    if strategy == "fsdp":
        cfg = dict(fsdp_config)
        layer = cfg.pop("transformer_layer_cls", None)
        options = cfg.pop("fsdp", "full_shard auto_wrap")
        if layer:
            cfg["transformer_layer_cls_to_wrap"] = [layer]
        return {"fsdp": options, "fsdp_config": cfg}
    stage = 2 if strategy == "deepspeed_zero2" else 3
    return {
        "deepspeed": {
            "zero_optimization": {"stage": stage, "overlap_comm": True},
            "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
        }
    }
