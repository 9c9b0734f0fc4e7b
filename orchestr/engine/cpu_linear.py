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
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child, batch_hint))
    log.info("packed %d bf16 linear layers for oneDNN", len(swaps))
    return len(swaps)
