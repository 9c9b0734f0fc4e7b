"""``load_8bit`` on CPU: weight-only group-wise int8 (groups of 64). Its quantization, the real
model's perplexity against fp32, the full-precision weights being gone, and greedy decoding
batched == unbatched on the int8 model."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
import torch
from torch import nn

from orchestr.config.serving import EngineConfig
from orchestr.engine.engine import Engine
from orchestr.engine.int8_weights import (
    GROUP_SIZE,
    Int8Embedding,
    Int8Linear,
    Int8Weight,
    dequantize,
    quantize_groupwise,
)
from orchestr.engine.loader import load_model, quantize_int8_cpu
from orchestr.protocol import ChatMessage, GenerateRequest

MODEL = "embedded://SmolLM2-135M-Instruct"
# A fixed English paragraph (not from the model's training set as far as we know; any plain text works).
PARAGRAPH = (
    "The history of the city goes back more than two thousand years. It began as a small settlement on the "
    "banks of a river, where farmers and fishermen traded their goods. Over the centuries it grew into a busy "
    "port, and merchants from many countries came to buy wool, salt and wine. Today it is known for its old "
    "stone bridges, its university and its markets, which still open every morning in the main square."
)


def perplexity(model, tok) -> float:
    ids = tok(PARAGRAPH, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return float(torch.exp(model(input_ids=ids, labels=ids).loss))


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@pytest.fixture(scope="module")
def fp32():
    return load_model(MODEL, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def int8():
    return load_model(MODEL, device="cpu", dtype="float32", load_8bit=True)


# --------------------------------------------------------------------------- quantization itself


@pytest.mark.parametrize("cols", [128, 100])  # 100: padded to two groups
def test_groupwise_round_trip_is_within_half_a_step(cols):
    torch.manual_seed(0)
    w = torch.randn(8, cols)
    w[:, :GROUP_SIZE] *= 0.01  # groups of very different ranges
    q, scales = quantize_groupwise(w)
    assert q.dtype == torch.int8 and scales.shape == (8, -(-cols // GROUP_SIZE))
    back = dequantize(q, scales, cols, torch.float32)
    step = scales.repeat_interleave(GROUP_SIZE, dim=1)[:, :cols]
    assert back.shape == w.shape and bool(((back - w).abs() <= step / 2 + 1e-6).all())
    # per group, not per tensor: the small-range columns keep their precision
    assert float((back[:, :GROUP_SIZE] - w[:, :GROUP_SIZE]).abs().max()) < 0.05 * 0.01 * 4 / 2


# 130 rows: more than one of the kernel's 64-row passes; 100 columns: not a whole number of
# groups, so the kernel declines and the weight is dequantized for the product
@pytest.mark.parametrize(("rows", "cols"), [(1, 192), (5, 192), (64, 192), (130, 192), (7, 100)])
def test_int8_linear_matches_its_dequantized_weight(rows, cols):
    torch.manual_seed(1)
    lin = nn.Linear(cols, 80, bias=True)
    layer = Int8Linear.of(lin, Int8Weight(lin.weight), torch.float32)
    x = torch.randn(rows, cols)
    want = torch.nn.functional.linear(x, layer.int8.full(torch.float32), lin.bias)
    got = layer(x)
    assert got.shape == (rows, 80) and torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    # bf16 activations go through the same path and come back in bf16
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_the_kernel_takes_decode_sized_products():
    from orchestr.engine import native

    if native.library() is None:
        pytest.skip("no C compiler: the dequantized matmul path serves every size")
    q, scales = quantize_groupwise(torch.randn(32, 128))
    x = torch.randn(3, 128)
    out = native.int8_linear(x, q, scales)
    assert out is not None and torch.allclose(out, x @ dequantize(q, scales, 128, torch.float32).T, atol=1e-4)
    assert native.int8_linear(x.to(torch.bfloat16), q, scales) is None  # fp32 only: the caller converts


# --------------------------------------------------------------------------- the real model


def test_perplexity_within_2_percent_of_fp32(fp32, int8):
    base, quant = perplexity(*fp32), perplexity(*int8)
    assert abs(quant - base) / base < 0.02, (base, quant)


def test_perplexity_with_bf16_activations_within_2_percent_of_fp32(fp32):
    """`--load-8bit` with the default dtype on a bf16 CPU: int8 weights, bf16 activations and KV."""
    base = perplexity(*fp32)
    quant = perplexity(*load_model(MODEL, device="cpu", dtype="bfloat16", load_8bit=True))
    assert abs(quant - base) / base < 0.02, (base, quant)


def test_full_precision_weights_are_gone():
    model, _ = load_model(MODEL, device="cpu", dtype="float32")
    fp32_bytes = weight_bytes(model)
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    layer_weight = model.model.layers[0].mlp.down_proj.weight
    refs = [weakref.ref(t) for t in (head, embed, layer_weight)]
    del head, embed, layer_weight
    quantize_int8_cpu(model, torch.float32)
    gc.collect()
    assert all(r() is None for r in refs)  # nothing holds the fp32 tensors any more
    assert not [m for m in model.modules() if type(m) in (nn.Linear, nn.Embedding)]
    biggest = max(p.numel() for p in model.parameters())
    assert biggest <= model.config.hidden_size  # only norms are left as parameters
    assert weight_bytes(model) <= 0.3 * fp32_bytes
    # the tied embedding and LM head share one int8 copy
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    assert isinstance(head, Int8Linear) and isinstance(embed, Int8Embedding) and head.int8 is embed.int8


def test_int8_engine_greedy_batched_equals_unbatched(int8):
    model, tok = int8
    prompts = ["Write a long story about a dragon who learns to bake bread.",
               "Explain in detail how a steam engine works.", "What is the capital of France?"]

    def req(text: str) -> GenerateRequest:
        return GenerateRequest(model="m", messages=[ChatMessage(role="user", content=text)], temperature=0.0,
                               max_new_tokens=24)

    before = weight_bytes(model)
    batched = Engine(model, tok, EngineConfig(batching=True, max_batch_size=8, kv_cache_tokens=4096)).start()
    try:
        assert batched.dtype_name == "int8"
        # q/k/v and gate/up stacked into one int8 product each: moved, not copied beside the originals
        assert weight_bytes(model) <= before * 1.01
        assert not [m for m in model.modules() if type(m) in (nn.Linear, nn.Embedding)]
        assert batched.flat_forward is not None  # int8 layers fused (q/k/v, gate/up) and run by the flat loop

        async def together():
            return await asyncio.gather(*[batched.generate(req(p)) for p in prompts])

        many = asyncio.run(together())
        alone = [asyncio.run(batched.generate(req(p))) for p in prompts]
    finally:
        batched.shutdown()
    assert [r.text for r in many] == [r.text for r in alone]
    assert "Paris" in alone[2].text
