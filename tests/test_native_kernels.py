"""orchestr's C kernels (orchestr/engine/kernels/cpu_kernels.c) against the torch code they
replace, in fp32 and bf16, on shapes of real models (GQA groups, odd lengths, padded slots)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from orchestr.engine import native

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler: the engine uses its torch path")

DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _pooled(dtype, seqs: int, heads: int, kv_heads: int, dim: int, lens: list[int], block: int = 16):
    """A pool with each sequence's history in shuffled blocks, as the engine lays it out."""
    torch.manual_seed(0)
    width = max(lens)
    blocks_per_seq = -(-width // block)
    order = torch.randperm(seqs * blocks_per_seq + 3)[: seqs * blocks_per_seq].view(seqs, blocks_per_seq)
    slots = (order[:, :, None] * block + torch.arange(block)).view(seqs, -1)[:, :width].contiguous()
    pool_slots = (seqs * blocks_per_seq + 3) * block
    k_pool = torch.randn(pool_slots, kv_heads, dim).to(dtype)
    v_pool = torch.randn(pool_slots, kv_heads, dim).to(dtype)
    # queries as the engine hands them over: a [D, H, d] view with the token stride outermost
    q = torch.randn(heads, seqs + 2, dim).to(dtype).transpose(0, 1)[:seqs]
    return q, k_pool, v_pool, slots, torch.tensor(lens)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 4, 32), (8, 1, 24)])
def test_paged_decode_matches_gather_and_sdpa(dtype, heads, kv_heads, dim):
    lens = [1, 17, 50, 33]
    q, k_pool, v_pool, slots, lens_t = _pooled(dtype, len(lens), heads, kv_heads, dim, lens)
    out = native.paged_decode(q, k_pool, v_pool, slots, lens_t, dim**-0.5)
    assert out is not None and out.shape == q.shape and out.dtype == dtype
    width = slots.shape[1]
    k = k_pool[slots.view(-1)].view(len(lens), width, kv_heads, dim).transpose(1, 2).float()
    v = v_pool[slots.view(-1)].view(len(lens), width, kv_heads, dim).transpose(1, 2).float()
    mask = (torch.arange(width)[None] < lens_t[:, None])[:, None, None, :]
    ref = F.scaled_dot_product_attention(q.float().unsqueeze(2), k, v, attn_mask=mask, enable_gqa=True).squeeze(2)
    assert torch.allclose(out.float(), ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "dim", "start", "n"),
                         [(9, 3, 64, 0, 1), (9, 3, 64, 40, 21), (9, 3, 64, 0, 37), (4, 4, 32, 5, 9), (8, 1, 24, 3, 4)])
def test_paged_prefill_is_causal_attention_and_bitwise_the_decode(dtype, heads, kv_heads, dim, start, n):
    """Each row of a prefill chunk attends to the history and the chunk up to itself, and gets
    exactly what the decode kernel gives the same token (prefix-cached and recomputed blocks
    then agree bit for bit); tiles of 8 rows and a remainder, the portable path for dim 24."""
    q, k_pool, v_pool, slots, _ = _pooled(dtype, 1, heads, kv_heads, dim, [start + n])
    q = torch.randn(heads, n + 2, dim).to(dtype).transpose(0, 1)[:n]  # strided like the engine's
    out = native.paged_prefill(q, k_pool, v_pool, slots[0], start, dim**-0.5)
    assert out is not None and out.shape == q.shape and out.dtype == dtype
    lens = torch.arange(start + 1, start + n + 1)
    decode = native.paged_decode(q, k_pool, v_pool, slots.expand(n, -1).contiguous(), lens, dim**-0.5)
    assert torch.equal(out, decode)
    k = k_pool[slots[0]].transpose(0, 1).float()[None]  # [1, KV, L, d]
    v = v_pool[slots[0]].transpose(0, 1).float()[None]
    mask = torch.arange(start + n)[None, :] <= (start + torch.arange(n))[:, None]
    ref = F.scaled_dot_product_attention(q.float().transpose(0, 1)[None], k, v, attn_mask=mask, enable_gqa=True)
    assert torch.allclose(out.float(), ref[0].transpose(0, 1), atol=TOL[dtype], rtol=TOL[dtype])


def test_paged_decode_declines_what_it_cannot_take():
    q, k_pool, v_pool, slots, lens = _pooled(torch.float32, 2, 6, 4, 16, [3, 5])  # 6 heads over 4 KV heads
    assert native.paged_decode(q, k_pool, v_pool, slots, lens, 0.25) is None
    q, k_pool, v_pool, slots, lens = _pooled(torch.float16, 2, 4, 2, 16, [3, 5])
    assert native.paged_decode(q, k_pool, v_pool, slots, lens, 0.25) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_transformers(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(576, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(576) + 0.5)
    x = (torch.randn(2, 7, 576) * 3).to(dtype)
    with torch.no_grad():
        ref = norm(x)
    out = native.rms_norm(x, norm.weight.detach(), norm.variance_epsilon)
    assert out is not None and out.shape == x.shape
    # bf16: one rounding step apart at most where the float sums differ in order
    assert torch.allclose(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])
    if dtype == torch.float32:
        assert torch.allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_matches_transformers(dtype):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    tokens, heads, kv_heads, dim = 5, 9, 3, 64
    qkv = torch.randn(tokens, heads + 2 * kv_heads, dim).to(dtype)
    angles = torch.arange(tokens)[:, None].float() * (1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    q_ref, k_ref = apply_rotary_pos_emb(qkv[None, :, :heads].transpose(1, 2), qkv[None, :, heads:heads + kv_heads]
                                        .transpose(1, 2), cos[None], sin[None])
    qk = qkv[:, : heads + kv_heads]  # a strided view, rotated in place
    assert native.rotary_(qk, cos, sin)
    # fp32 may differ in the last bit (the C code may fuse a multiply-add); bf16 rounds each
    # product as transformers does
    tol = 1e-6 if dtype == torch.float32 else 0.0
    assert torch.allclose(qkv[:, :heads], q_ref[0].transpose(0, 1), atol=tol, rtol=tol)
    assert torch.allclose(qkv[:, heads:heads + kv_heads], k_ref[0].transpose(0, 1), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_matches_add_then_norm(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(64, eps=1e-6).to(dtype)
    h, delta = torch.randn(6, 64).to(dtype), torch.randn(6, 64).to(dtype)
    expected_h = h + delta
    with torch.no_grad():
        expected = norm(expected_h)
    out = native.add_rms_norm_(h, delta, norm.weight.detach(), norm.variance_epsilon)
    assert out is not None
    assert torch.equal(h, expected_h)  # the residual stream, updated in place, rounded like a tensor add
    assert torch.allclose(out.float(), expected.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_argmax_rows_picks_the_first_maximum(dtype):
    x = torch.randn(5, 49152 + 7).to(dtype)
    x[1, 3000] = x[1, 40000] = 50.0  # a tie: the first wins
    x[2, -1] = 60.0  # in the scalar tail
    x[3] = -float("inf")
    x[3, 17] = 0.0
    picked = native.argmax_rows(x)
    assert picked is not None
    assert picked.tolist() == x.float().argmax(dim=-1).tolist()
    assert picked[1] == 3000 and picked[2] == x.shape[1] - 1 and picked[3] == 17


# M (rows of x) across the kernel's register tiles of 8 rows and passes of 64, and N (weight rows) across its
# tiles of 3, remainders included; K of one group and of several; x rows strided (a view).
@pytest.mark.parametrize(("m", "n", "k"), [(1, 960, 576), (5, 7, 64), (8, 3, 128), (16, 576, 1536), (17, 11, 192),
                                           (130, 50, 320)])
def test_int8_linear_matches_dequantized_matmul(m, n, k):
    from orchestr.engine.int8_weights import dequantize, quantize_groupwise

    torch.manual_seed(3)
    weight = torch.randn(n, k) * torch.rand(n, k // 64).repeat_interleave(64, dim=1)  # groups of different ranges
    q, scales = quantize_groupwise(weight)
    x = torch.randn(m, k + 32)[:, :k]  # row stride != k
    out = native.int8_linear(x, q, scales)
    want = x @ dequantize(q, scales, k, torch.float64).T.float()
    assert out is not None and out.shape == (m, n) and out.dtype == torch.float32
    assert torch.allclose(out, want, rtol=1e-4, atol=1e-4 * k**0.5)


def test_int8_linear_declines_what_it_cannot_take():
    from orchestr.engine.int8_weights import quantize_groupwise

    q, scales = quantize_groupwise(torch.randn(4, 128))
    assert native.int8_linear(torch.randn(2, 128).to(torch.bfloat16), q, scales) is None  # fp32 x only
    assert native.int8_linear(torch.randn(2, 64), q, scales) is None  # K mismatch
