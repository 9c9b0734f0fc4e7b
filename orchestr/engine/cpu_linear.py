"""bf16 linear layers with weights pre-packed for oneDNN (AMX / AVX-512 BF16 kernels).

A plain bf16 ``F.linear`` on CPU re-lays out the weight on every call; for the small token
counts of decode steps that costs as much as the product itself. Packing once at load time
measured ~2x faster per layer for 16 tokens on this CPU, with identical results.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, batch_hint: int = 16) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint),
                             persistent=False)
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:  # shape/dtype probes only (e.g. dtype detection)
        return self.packed_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


class FusedGatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with gate and up as ONE packed product (fewer, larger
    matmuls per layer)."""

    def __init__(self, mlp: nn.Module, batch_hint: int = 16) -> None:
        super().__init__()
        weight = torch.cat([mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()], dim=0)
        self.split = mlp.gate_proj.out_features
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint),
                             persistent=False)
        self.act_fn = mlp.act_fn
        self.down_proj = PackedLinear(mlp.down_proj, batch_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, None, "none", [], "")
        gate, up = gate_up.split(self.split, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


# MLP classes whose forward is exactly down(act(gate(x)) * up(x)), without biases
_GATED_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}


def _fusable_mlp(module: nn.Module) -> bool:
    if type(module).__name__ not in _GATED_MLPS:
        return False
    parts = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    return all(type(p) is nn.Linear and p.bias is None and p.weight.dtype == torch.bfloat16 for p in parts)


def can_pack(model: nn.Module) -> bool:
    try:
        param = next(model.parameters())
    except StopIteration:
        return False
    return (param.device.type == "cpu" and param.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_linears(model: nn.Module, batch_hint: int = 16) -> int:
    """Swap every bf16 ``nn.Linear`` of ``model`` (LM head included) for a packed one.
    Returns how many were swapped; 0 when the CPU/dtype does not qualify."""
    if not can_pack(model):
        return 0
    mlps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if _fusable_mlp(child)]
    for parent, name, child in mlps:
        setattr(parent, name, FusedGatedMLP(child, batch_hint))
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child, batch_hint))
    log.info("packed %d bf16 linear layers (+%d fused gate/up MLPs) for oneDNN", len(swaps), len(mlps))
    return len(swaps) + len(mlps)
