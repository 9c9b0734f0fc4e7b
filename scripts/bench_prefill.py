"""Prefill against the machine's bf16 peak: how close the engine's prompt processing gets.

Prints (one run, this machine):
- the bf16 matrix-product peak measured with torch (oneDNN; a large square product on all
  threads), the practical ceiling of the projections and MLP;
- the engine's cold prefill of one long prompt (tokens/s, time to first token) and, from the
  model's shape, the FLOPs it did: projections/MLP and attention separately, and their
  share of the measured peak;
- the same prompt sent again (the prefix cache: only its last block is computed);
- the native prefill attention kernel against torch's SDPA (gather + mask) on one chunk shape.

    .venv/bin/python scripts/bench_prefill.py [--tokens 1660] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch


def gemm_peak(n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of an n x n x n bf16 product (best of ``reps``)."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def model_flops(model, tokens: int) -> tuple[float, float]:
    """(projection + MLP FLOPs, attention FLOPs) of a causal prefill of ``tokens`` tokens."""
    cfg = model.config
    params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    dense = 2.0 * params * tokens
    attention = 4.0 * heads * head_dim * cfg.num_hidden_layers * tokens * (tokens + 1) / 2
    return dense, attention


def prompt_of(tokenizer, tokens: int, seed: int) -> list[int]:
    words = "the river carried old stories past the mill where the miller kept a ledger of every sack".split()
    text, ids = f"Record {seed}:", []
    i = seed
    while len(ids) < tokens:
        text += " " + words[i % len(words)]
        i = i * 31 + 7
        if len(text) % 50 == 0:
            ids = tokenizer(text)["input_ids"]
    return tokenizer(text)["input_ids"][:tokens]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1660)
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args()

    from orchestr.config.serving import EngineConfig
    from orchestr.engine.engine import Engine
    from orchestr.engine.loader import load_model
    from orchestr.protocol import GenerateRequest

    torch.set_num_threads(torch.get_num_threads())
    peak = gemm_peak()
    print(f"bf16 matrix product, {torch.get_num_threads()} threads: {peak:.1f} GFLOP/s (practical peak)")
    model, tok = load_model("embedded://SmolLM2-135M-Instruct", device="cpu", dtype=args.dtype)
    dense, attention = model_flops(model, args.tokens)
    engine = Engine(model, tok, EngineConfig()).start()

    async def ttft(ids: list[int]) -> float:
        req = GenerateRequest(model="m", prompt_token_ids=ids, max_new_tokens=1, temperature=0)
        t = time.perf_counter()
        await engine.generate(req)
        return time.perf_counter() - t

    asyncio.run(ttft(prompt_of(tok, 64, 0)))  # warm up (kernels, thread policy)
    colds = [asyncio.run(ttft(prompt_of(tok, args.tokens, seed))) for seed in (1, 2, 3)]
    cold = min(colds)
    again = asyncio.run(ttft(prompt_of(tok, args.tokens, 3)))
    print(f"cold prefill of {args.tokens} tokens: {cold:.3f} s (best of 3: {', '.join(f'{c:.3f}' for c in colds)}),"
          f" {args.tokens / cold:.0f} tokens/s")
    print(f"  FLOPs: projections+MLP {dense / 1e9:.1f} G, attention {attention / 1e9:.1f} G; "
          f"{(dense + attention) / cold / 1e9:.1f} GFLOP/s = {100 * (dense + attention) / cold / 1e9 / peak:.0f} % "
          f"of the measured peak")
    print(f"same prompt again (prefix cache): {again:.3f} s")
    engine.shutdown()

    from orchestr.engine import native

    if native.library() is None:
        return
    import torch.nn.functional as F

    heads, kv, d = model.config.num_attention_heads, model.config.num_key_value_heads, 64
    pool_k = torch.randn(8192, kv, d, dtype=torch.bfloat16)
    pool_v = torch.randn(8192, kv, d, dtype=torch.bfloat16)
    for start, n in ((0, 512), (1148, 512), (1000, 64)):
        slots = torch.randperm(8192)[: start + n]
        q = torch.randn(n, heads, d, dtype=torch.bfloat16)

        def sdpa(q=q, slots=slots, start=start, n=n):
            kc = pool_k.index_select(0, slots).transpose(0, 1)[None]
            vc = pool_v.index_select(0, slots).transpose(0, 1)[None]
            mask = torch.arange(start + n)[None, :] <= (start + torch.arange(n))[:, None] if start else None
            return F.scaled_dot_product_attention(q.transpose(0, 1)[None], kc, vc, attn_mask=mask,
                                                  is_causal=mask is None, enable_gqa=True)

        def kernel(q=q, slots=slots, start=start):
            return native.paged_prefill(q, pool_k, pool_v, slots, start, d**-0.5)

        times = {}
        for name, fn in (("native", kernel), ("sdpa", sdpa)):
            fn()
            best = float("inf")
            for _ in range(5):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            times[name] = best * 1e3
        print(f"attention of one layer, {n} tokens after {start}: native {times['native']:.2f} ms, "
              f"torch SDPA {times['sdpa']:.2f} ms")


if __name__ == "__main__":
    main()
