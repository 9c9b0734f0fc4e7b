"""Weight-only, group-wise int8 for CPU (``load_8bit`` on CPU), as FastChat's 8-bit compression:
each row of a weight is cut into groups of 64 inputs, each group stored as int8 with its own
scale (symmetric, absmax / 127). Activations stay in the model's dtype. Products run in
orchestr's C kernel (``orchestr_int8_linear``: each group dequantized in registers, fp32 math),
for decode steps and prefill chunks alike (it measured faster than dequantizing the weight for
a oneDNN matmul up to 512 rows); without the C kernels the weight is dequantized per product.

Why not torch's dynamic int8: it also quantizes activations (per tensor), which doubled the
embedded model's perplexity, and it kept the fp32 weights beside the int8 copy. Here the
full-precision weights are dropped: linear layers and the token embedding (tied to the LM head
or not) keep only int8 values and scales, ~27 % of fp32's bytes.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from orchestr.engine import native

log = logging.getLogger(__name__)

GROUP_SIZE = 64


def quantize_groupwise(weight: torch.Tensor, group: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)``: int8 ``[rows, cols_padded]`` and fp32 ``[rows, cols_padded // group]``.
    Columns are zero-padded to a multiple of ``group``. Done in blocks of rows, so the fp32
    temporaries stay small next to the weight itself."""
    rows, cols = weight.shape
    pad = -cols % group
    q = torch.empty(rows, cols + pad, dtype=torch.int8)
    scales = torch.empty(rows, (cols + pad) // group, dtype=torch.float32)
    for r0 in range(0, rows, 1024):
        w = weight[r0 : r0 + 1024].detach().float()
        if pad:
            w = F.pad(w, (0, pad))
        groups = w.view(w.shape[0], -1, group)
        s = groups.abs().amax(dim=-1).clamp_min(1e-12) / 127.0
        q[r0 : r0 + 1024] = torch.round(groups / s.unsqueeze(-1)).clamp_(-127, 127).view(w.shape[0], -1)
        scales[r0 : r0 + 1024] = s
    return q, scales


def dequantize(q: torch.Tensor, scales: torch.Tensor, cols: int, dtype: torch.dtype) -> torch.Tensor:
    rows = q.shape[0]
    w = q.view(rows, scales.shape[1], -1).to(dtype) * scales.to(dtype).unsqueeze(-1)
    return w.view(rows, -1)[:, :cols]


class Int8Weight(nn.Module):
    """An int8 weight and its group scales; shared by a tied embedding and LM head."""

    def __init__(self, weight: torch.Tensor | None, group: int = GROUP_SIZE, *,
                 parts: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> None:
        """From a full-precision ``weight``, or from ``parts=(qweight, scales, cols)`` already quantized."""
        super().__init__()
        if parts is None:
            q, scales = quantize_groupwise(weight, group)
            cols = weight.shape[1]
        else:
            q, scales, cols = parts
        self.rows, self.cols = q.shape[0], cols
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales)

    @staticmethod
    def concat(weights: list[Int8Weight]) -> Int8Weight:
        """The rows of ``weights`` stacked (e.g. q/k/v as one product): int8 values and scales
        are per row, so this is exact."""
        cols = {w.cols for w in weights}
        if len(cols) != 1:
            raise ValueError(f"cannot stack int8 weights of different widths: {sorted(cols)}")
        return Int8Weight(None, parts=(torch.cat([w.qweight for w in weights]),
                                       torch.cat([w.scales for w in weights]), cols.pop()))

    def full(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.qweight, self.scales, self.cols, dtype)

    def rows_of(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        flat = ids.reshape(-1)
        w = dequantize(self.qweight.index_select(0, flat), self.scales.index_select(0, flat), self.cols, dtype)
        return w.view(*ids.shape, self.cols)


class _Int8Module(nn.Module):
    """A layer whose weight is held as an :class:`Int8Weight`, computing in ``compute_dtype``."""

    def __init__(self, weight: Int8Weight, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.int8 = weight
        self.compute_dtype = compute_dtype

    @property
    def weight(self) -> torch.Tensor:
        """dtype/shape probes only (the engine sizes its KV cache from the embedding's dtype): a
        meta tensor, so any real use of it fails loudly instead of costing a dequantization."""
        return torch.empty(self.int8.rows, self.int8.cols, dtype=self.compute_dtype, device="meta")


class Int8Linear(_Int8Module):
    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None, compute_dtype: torch.dtype) -> None:
        super().__init__(weight, compute_dtype)
        self.in_features, self.out_features = weight.cols, weight.rows
        self.bias = bias

    @staticmethod
    def of(linear: nn.Linear, weight: Int8Weight, compute_dtype: torch.dtype) -> Int8Linear:
        return Int8Linear(weight, linear.bias, compute_dtype)

    @staticmethod
    def concat(layers: list[Int8Linear]) -> Int8Linear:
        """One layer computing ``layers``' outputs side by side (fused q/k/v, gate/up)."""
        biases = [layer.bias for layer in layers]
        if any(b is None for b in biases) and any(b is not None for b in biases):
            raise ValueError("cannot stack int8 layers with and without bias")
        bias = None if biases[0] is None else nn.Parameter(torch.cat([b.detach() for b in biases]),
                                                           requires_grad=False)
        return Int8Linear(Int8Weight.concat([layer.int8 for layer in layers]), bias, layers[0].compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        return self.product(rows).view(*x.shape[:-1], self.out_features)

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` [M, in] -> [M, out], in ``rows``' dtype."""
        # the int8 kernel: weights never dequantized in full
        out = native.int8_linear(rows if rows.dtype == torch.float32 else rows.float(), self.int8.qweight,
                                 self.int8.scales)
        if out is not None:
            if self.bias is not None:
                out += self.bias
            return out if rows.dtype == torch.float32 else out.to(rows.dtype)
        # no C kernels, or columns that are not a whole number of groups
        bias = None if self.bias is None else self.bias.to(rows.dtype)
        return F.linear(rows, self.int8.full(rows.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 groups of {GROUP_SIZE}"


class Int8Embedding(_Int8Module):
    def __init__(self, embedding: nn.Embedding, weight: Int8Weight, compute_dtype: torch.dtype) -> None:
        super().__init__(weight, compute_dtype)
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.int8.rows_of(ids, self.compute_dtype)


def quantize_model(model: nn.Module, compute_dtype: torch.dtype | None = None, group: int = GROUP_SIZE) -> int:
    """Swap every ``nn.Linear`` and ``nn.Embedding`` for its int8 form, in place, dropping the
    full-precision weights (quantized from the precision they were loaded in: load fp32 for the
    best int8). The remaining parameters (norms, biases) are cast to ``compute_dtype``, the
    activations' dtype; scales stay fp32. Tied weights stay tied (one int8 copy). Returns the
    number of layers swapped."""
    shared: dict[int, Int8Weight] = {}  # id of the original Parameter -> its int8 form

    def int8_of(param: torch.Tensor) -> Int8Weight:
        key = id(param)
        if key not in shared:
            shared[key] = Int8Weight(param, group)
        return shared[key]

    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) in (nn.Linear, nn.Embedding) and child.weight.dim() == 2]
    for parent, name, child in swaps:
        dtype = compute_dtype or child.weight.dtype
        if type(child) is nn.Linear:
            setattr(parent, name, Int8Linear.of(child, int8_of(child.weight), dtype))
        else:
            setattr(parent, name, Int8Embedding(child, int8_of(child.weight), dtype))
    # The remaining parameters get storage of their own: loaded tensors can be views of one
    # memory-mapped checkpoint, which any survivor would keep resident in full.
    for param in model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(compute_dtype or param.dtype, copy=True)
    swapped, distinct = len(swaps), len(shared)
    parent = child = swaps = None  # the last references to the full-precision modules
    release_freed_memory()
    log.info("int8 weights (groups of %d) for %d layers, %d distinct tensors", group, swapped, distinct)
    return swapped


def release_freed_memory() -> None:
    """Give the freed fp32 weights' pages back to the OS: glibc keeps freed heap memory for reuse
    (its mmap threshold grows after large frees), so without this the process's RSS would not
    shrink. No-op where there is no glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Weight) for m in model.modules())
