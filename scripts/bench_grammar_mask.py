"""Per-step cost of a JSON-schema token mask on CPU: xgrammar vs llguidance, on the embedded
model's tokenizer (49152 tokens), for a batch of constrained rows. Run: python scripts/bench_grammar_mask.py"""

from __future__ import annotations

import json
import random
import sys
import time

import torch

from orchestr.engine.loader import resolve_model_path

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "color": {"enum": ["red", "green", "blue"]}, "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "color", "tags"], "additionalProperties": False}
STEPS = 40


def run_xgrammar(tok, rows):
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
    comp = xgr.GrammarCompiler(info)
    grammar = comp.compile_json_schema(json.dumps(SCHEMA))
    compile_s = time.perf_counter() - t0
    matchers = [xgr.GrammarMatcher(grammar) for _ in range(rows)]
    mask = xgr.allocate_token_bitmask(rows, info.vocab_size)
    logits = torch.randn(rows, len(tok))
    spent = 0.0
    for _ in range(STEPS):
        t = time.perf_counter()
        for i, m in enumerate(matchers):
            m.fill_next_token_bitmask(mask, i)
        xgr.apply_token_bitmask_inplace(logits, mask)
        spent += time.perf_counter() - t
        for i, m in enumerate(matchers):
            allowed = torch.nonzero(logits[i] > -1e30).flatten().tolist()
            if m.is_terminated() or not allowed:
                continue
            m.accept_token(random.choice(allowed))
        logits = torch.randn(rows, len(tok))
    return compile_s, spent / STEPS


def run_llguidance(tok, rows):
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt

    t0 = time.perf_counter()
    info = llguidance.hf.from_tokenizer(tok)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    matchers = [llguidance.LLMatcher(info, grammar) for _ in range(rows)]
    compile_s = time.perf_counter() - t0
    mask = lt.allocate_token_bitmask(rows, info.vocab_size)
    logits = torch.randn(rows, len(tok))
    spent = 0.0
    for _ in range(STEPS):
        t = time.perf_counter()
        for i, m in enumerate(matchers):
            lt.fill_next_token_bitmask(m, mask, i)
        lt.apply_token_bitmask_inplace(logits, mask)
        spent += time.perf_counter() - t
        for i, m in enumerate(matchers):
            allowed = torch.nonzero(logits[i] > -1e30).flatten().tolist()
            if m.is_stopped() or not allowed:
                continue
            m.consume_token(random.choice(allowed))
        logits = torch.randn(rows, len(tok))
    return compile_s, spent / STEPS


def main() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded://SmolLM2-135M-Instruct"))
    for rows in (1, 4, 16):
        for name, fn in (("xgrammar", run_xgrammar), ("llguidance", run_llguidance)):
            random.seed(0)
            try:
                compile_s, step = fn(tok, rows)
            except Exception as e:  # a library missing or failing: say so and go on
                print(f"{name}: {e!r}", file=sys.stderr)
                continue
            print(f"{name:10s} rows={rows:2d} compile {compile_s * 1000:7.1f} ms  mask per step {step * 1000:6.2f} ms")


if __name__ == "__main__":
    main()
