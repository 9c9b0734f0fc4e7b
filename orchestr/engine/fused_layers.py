"""Fewer, larger operations per layer for the engine's CPU forward.

A decode step of a small model is dozens of tiny tensor ops per layer, and on CPU each costs
a dispatch whatever its size: transformers' RMSNorm is eight of them, its rotary embedding a
dozen, and q/k/v are three separate matmuls. Swapped in here, for the Llama family of
attention/norm classes only (others keep transformers' modules unchanged):

* :class:`NativeRMSNorm`: one C kernel per norm (``kernels/cpu_kernels.c``);
* :class:`FusedAttention`: q/k/v as ONE matmul, rotary in place in C, then orchestr's paged
  attention (:func:`paged_attention.attend`) and the model's own ``o_proj``;
* :class:`Int8GatedMLP`: for int8 models (``load_8bit`` on CPU), gate and up as ONE int8 product
  (bf16 models get theirs packed for oneDNN in :mod:`cpu_linear`).

q/k/v (and gate/up) are stacked from plain ``nn.Linear`` layers or from int8 ones
(:class:`~orchestr.engine.int8_weights.Int8Linear`: int8 rows and scales stacked, still int8).

Numerics follow the replaced modules (same bf16 roundings), so greedy outputs match up to
the order of float sums. Nothing is swapped when the C kernels are not available.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from orchestr.engine import native
from orchestr.engine import paged_attention as pa
from orchestr.engine.int8_weights import Int8Linear, release_freed_memory

log = logging.getLogger(__name__)

# classes whose forward is exactly what the replacements compute
_RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"}
_ATTENTIONS = {"LlamaAttention", "MistralAttention", "Qwen2Attention"}


class NativeRMSNorm(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon
        self._fallback = norm

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = None
        if hidden_states.dtype == self.weight.dtype:
            out = native.rms_norm(hidden_states, self.weight, self.variance_epsilon)
        return self._fallback(hidden_states) if out is None else out


class FusedAttention(nn.Module):
    """Llama-style self-attention over the paged KV cache with one fused q/k/v projection."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.layer_idx = attn.layer_idx
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
        # head counts from the projections themselves (no config lookup to keep in step)
        self.num_heads, self.num_kv_heads = q.out_features // self.head_dim, k.out_features // self.head_dim
        self.qkv_proj = Int8Linear.concat([q, k, v]) if isinstance(q, Int8Linear) else _stack_linears([q, k, v])
        self.o_proj = attn.o_proj

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, **kwargs):
        batch, tokens = hidden_states.shape[:2]
        h, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv_proj(hidden_states).view(batch, tokens, h + 2 * kv, d)
        cos, sin = (t.to(qkv.dtype) for t in position_embeddings)  # [batch, T, d]
        if pa.in_step():  # the engine's flattened step: batch is 1
            qkv = qkv[0]
            qk = qkv[:, : h + kv]
            if not native.rotary_(qk, cos[0], sin[0]):
                qk.copy_(rotate(qk, cos[0], sin[0]))
            out = pa.attend(self.layer_idx, qkv[:, :h], qkv[:, h : h + kv], qkv[:, h + kv :], self.scaling)
        else:  # a plain forward of unpadded sequences (embeddings): causal over each
            if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
                raise RuntimeError("this model's layers are fused for orchestr's engine: it cannot run with a "
                                   "transformers KV cache (generate); load a fresh copy for that")
            qk = rotate(qkv[:, :, : h + kv], cos[:, :, None, :], sin[:, :, None, :])
            q, k, v = (t.transpose(1, 2) for t in (qk[:, :, :h], qk[:, :, h:], qkv[:, :, h + kv :]))
            out = F.scaled_dot_product_attention(q, k, v, is_causal=tokens > 1, scale=self.scaling,
                                                 enable_gqa=True).transpose(1, 2)
        return self.o_proj(out.reshape(batch, tokens, h * d)), None


def _stack_linears(layers: list[nn.Linear]) -> nn.Linear:
    weight = torch.cat([layer.weight.detach() for layer in layers], dim=0)
    bias = None
    if layers[0].bias is not None:
        bias = torch.cat([layer.bias.detach() for layer in layers], dim=0)
    stacked = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                        dtype=weight.dtype)
    with torch.no_grad():
        stacked.weight.copy_(weight)
        if bias is not None:
            stacked.bias.copy_(bias)
    return stacked


class Int8GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with int8 gate and up as one product."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = Int8Linear.concat([mlp.gate_proj, mlp.up_proj])
        self.split = mlp.gate_proj.out_features
        self.down_proj = mlp.down_proj
        self.act_fn = mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.split, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' rotate-half rotary; cos/sin broadcast against x [..., heads, d]."""
    if cos.dim() == x.dim() - 1:
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _attention_fusable(module: nn.Module) -> bool:
    if type(module).__name__ not in _ATTENTIONS:
        return False
    projections = [getattr(module, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    kinds = {type(p) for p in projections}
    if kinds not in ({nn.Linear}, {Int8Linear}):  # e.g. torch's or bitsandbytes' quantised layers
        return False
    dtypes = {p.weight.dtype for p in projections}
    return len(dtypes) == 1 and hasattr(module, "head_dim") and hasattr(module, "scaling")


# MLP classes whose forward is exactly down(act(gate(x)) * up(x)), without biases
_GATED_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}


def _int8_mlp_fusable(module: nn.Module) -> bool:
    parts = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    return (type(module).__name__ in _GATED_MLPS and all(type(p) is Int8Linear and p.bias is None for p in parts)
            and parts[0].compute_dtype == parts[1].compute_dtype)


def fuse_layers(model: nn.Module) -> int:
    """Swap the Llama family's attention and RMSNorm modules (and int8 gated MLPs) of a CPU
    model for the fused ones; returns how many were swapped (0 without the C kernels or off CPU)."""
    try:
        param = next(model.parameters())
    except StopIteration:
        return 0
    if param.device.type != "cpu" or native.library() is None:
        return 0
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child).__name__ in _RMS_NORMS:
                swaps.append((parent, name, NativeRMSNorm(child)))
            elif _attention_fusable(child):
                swaps.append((parent, name, FusedAttention(child)))
            elif _int8_mlp_fusable(child):
                swaps.append((parent, name, Int8GatedMLP(child)))
    for parent, name, new in swaps:
        setattr(parent, name, new)
    parent = child = new = None
    swaps_done = len(swaps)
    swaps = None  # the unstacked q/k/v and gate/up layers go now
    if swaps_done:
        release_freed_memory()
        log.info("fused %d attention/norm/MLP modules for the CPU engine", swaps_done)
    return swaps_done

