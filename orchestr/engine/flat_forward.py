"""The engine's forward for Llama-family models on CPU, as one flat loop.

After :func:`fused_layers.fuse_layers` and :func:`cpu_linear.pack_linears` (or with int8
layers, :class:`~orchestr.engine.int8_weights.Int8Linear`) a decoder layer is
a handful of large operations, but calling them through transformers' module tree still
costs a Python dispatch per module (decoder layer, norms, attention, MLP, each linear, their
hooks and kwargs): ~10 ms of a ~55 ms decode step of the embedded model. This runs the same
operations, on the same weights and in the same order, straight from a per-layer table.

Only models whose every layer is exactly the Llama shape (fused attention, native RMSNorms,
SiLU-gated MLP, residual adds) qualify; :func:`build` returns None for anything else and the
engine keeps calling the model itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from orchestr.engine import native
from orchestr.engine import paged_attention as pa
from orchestr.engine.cpu_linear import FusedGatedMLP, PackedLinear
from orchestr.engine.fused_layers import FusedAttention, Int8GatedMLP, NativeRMSNorm, rotate
from orchestr.engine.int8_weights import Int8Linear

_DECODER_LAYERS = {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer"}

Linear = Callable[[torch.Tensor], torch.Tensor]


def _packed(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear:
    """A oneDNN-packed product (see cpu_linear) as a plain function."""
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _linear(module: nn.Module) -> Linear | None:
    """The module's product as a plain function (no module dispatch)."""
    if isinstance(module, PackedLinear):
        return _packed(module.packed_weight, module.bias)
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    if type(module) is Int8Linear:  # x is already [T, in]: no reshaping needed
        return module.product
    return None


def _gated_mlp(mlp: nn.Module) -> Linear | None:
    """down(silu(gate(x)) * up(x)) as a function, for the fused and the plain module."""
    act = getattr(mlp, "act_fn", None)
    if not (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"):
        return None
    if isinstance(mlp, (FusedGatedMLP, Int8GatedMLP)):
        if isinstance(mlp, FusedGatedMLP):
            gate_up, down, split = _packed(mlp.packed_weight), _linear(mlp.down_proj), mlp.split
        else:
            gate_up, down, split = _linear(mlp.gate_up_proj), _linear(mlp.down_proj), mlp.split
        if gate_up is None or down is None:
            return None

        def fused(x: torch.Tensor) -> torch.Tensor:
            gate, up = gate_up(x).split(split, dim=-1)
            return down(F.silu(gate) * up)

        return fused
    parts = [_linear(getattr(mlp, n, nn.Identity())) for n in ("gate_proj", "up_proj", "down_proj")]
    if None in parts:
        return None
    gate, up, down = parts
    return lambda x: down(F.silu(gate(x)) * up(x))


@dataclass
class _Layer:
    index: int
    norm_in: NativeRMSNorm
    norm_post: NativeRMSNorm
    qkv: Linear
    o: Linear
    mlp: Linear
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float


def _rms(x: torch.Tensor, norm: NativeRMSNorm) -> torch.Tensor:
    out = native.rms_norm(x, norm.weight, norm.variance_epsilon)
    return norm(x) if out is None else out  # the module falls back to transformers' norm


def _add_rms(h: torch.Tensor, delta: torch.Tensor, norm: NativeRMSNorm) -> torch.Tensor:
    """h += delta (in place), then norm(h)."""
    out = native.add_rms_norm_(h, delta, norm.weight, norm.variance_epsilon)
    if out is None:
        h += delta
        out = _rms(h, norm)
    return out


@dataclass
class ForwardState:
    """A forward between two layers: the residual stream ``h``, the next layer's normed input
    ``x``, the rotary tables, and which layer runs next."""

    h: torch.Tensor
    x: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    next_layer: int = 0


class FlatForward:
    def __init__(self, base: nn.Module, layers: list[_Layer], lm_head: Linear) -> None:
        self.embed = base.embed_tokens
        self.rotary = base.rotary_emb
        self.final_norm = base.norm
        self.layers = layers
        self.lm_head = lm_head

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                 keep: torch.Tensor | None) -> torch.Tensor | None:
        """input_ids/position_ids [1, T] (the engine's flattened step) -> logits of the rows in
        ``keep`` ([K, vocab]), or None when ``keep`` is None (no LM head)."""
        state = self.start(input_ids, position_ids)
        self.run_layers(state)
        return self.logits(state, keep)

    def start(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> ForwardState:
        h = self.embed(input_ids)  # [1, T, hidden]
        cos, sin = self.rotary(h, position_ids)
        h = h[0]  # [T, hidden], the residual stream, updated in place
        return ForwardState(h=h, x=_rms(h, self.layers[0].norm_in), cos=cos[0], sin=sin[0])

    def run_layers(self, st: ForwardState, pause: Callable[[], bool] | None = None) -> bool:
        """Run the remaining layers; with ``pause``, ask it between layers whether to stop there
        (the engine serves a newly arrived short request, then resumes). True when done."""
        h, x, cos, sin = st.h, st.x, st.cos, st.sin
        tokens = h.shape[0]
        for i in range(st.next_layer, len(self.layers)):
            if pause is not None and i > st.next_layer and pause():
                st.x, st.next_layer = x, i
                return False
            layer = self.layers[i]
            qkv = layer.qkv(x).view(tokens, layer.heads + 2 * layer.kv_heads, layer.head_dim)
            q_end, k_end = layer.heads, layer.heads + layer.kv_heads
            qk = qkv[:, :k_end]
            if not native.rotary_(qk, cos, sin):
                qk.copy_(rotate(qk, cos, sin))
            attn = pa.attend(layer.index, qkv[:, :q_end], qkv[:, q_end:k_end], qkv[:, k_end:], layer.scaling)
            # residual add + the next norm in one pass, as transformers computes them
            x = _add_rms(h, layer.o(attn.reshape(tokens, -1)), layer.norm_post)
            delta = layer.mlp(x)
            if i + 1 < len(self.layers):
                x = _add_rms(h, delta, self.layers[i + 1].norm_in)
            else:
                h += delta
        st.x, st.next_layer = x, len(self.layers)
        return True

    def logits(self, st: ForwardState, keep: torch.Tensor | None) -> torch.Tensor | None:
        if keep is None:
            return None
        # the final norm is per row: only the rows whose next token is sampled
        return self.lm_head(_rms(st.h.index_select(0, keep), self.final_norm))


def build(model: nn.Module) -> FlatForward | None:
    """A flat forward for ``model`` if it is a fused Llama-family model on CPU, else None."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    layers = getattr(base, "layers", None)
    needed = ("embed_tokens", "rotary_emb", "norm")
    if base is None or layers is None or not all(hasattr(base, n) for n in needed):
        return None
    if not isinstance(base.norm, NativeRMSNorm) or native.library() is None:
        return None
    lm_head = _linear(getattr(model, "lm_head", nn.Identity()))
    if lm_head is None or getattr(model.config, "final_logit_softcapping", None):
        return None
    table: list[_Layer] = []
    for i, layer in enumerate(layers):
        attn, n_in, n_post = (getattr(layer, n, None) for n in ("self_attn", "input_layernorm",
                                                                 "post_attention_layernorm"))
        if type(layer).__name__ not in _DECODER_LAYERS or not isinstance(attn, FusedAttention):
            return None
        if not (isinstance(n_in, NativeRMSNorm) and isinstance(n_post, NativeRMSNorm)):
            return None
        qkv, o, mlp = _linear(attn.qkv_proj), _linear(attn.o_proj), _gated_mlp(layer.mlp)
        if qkv is None or o is None or mlp is None or attn.layer_idx != i:
            return None
        table.append(_Layer(index=i, norm_in=n_in, norm_post=n_post, qkv=qkv, o=o, mlp=mlp, heads=attn.num_heads,
                            kv_heads=attn.num_kv_heads, head_dim=attn.head_dim, scaling=attn.scaling))
    return FlatForward(base, table, lm_head)
