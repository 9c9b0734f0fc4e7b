"""Automatic prefix caching: the block pool's bookkeeping (fast), and the engine on the real
embedded model: greedy outputs with the cache equal those without it, on every shape that
reuses blocks (shared system prompts, chat histories, prompts diverging inside a block,
eviction, echo with prompt logprobs, structured outputs), in fp32 and bf16."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from orchestr.config.serving import EngineConfig
from orchestr.engine.block_pool import BLOCK_SIZE, BlockPool, chain_hashes
from orchestr.engine.engine import Engine
from orchestr.engine.loader import load_model
from orchestr.protocol import ChatMessage, GenerateRequest

MODEL = "embedded://SmolLM2-135M-Instruct"
SYSTEM = ("You are the assistant of the Riverside public library. Answer questions about opening hours, "
          "loans, renewals, fines, events, the reading rooms and the study spaces. Be brief and polite, "
          "and when you do not know something, say so and suggest asking at the front desk. ") * 4
QUESTIONS = ["When do you open on Saturdays?", "How many books can I borrow?", "Is there wifi?",
             "Can I renew a loan online?"]


# --------------------------------------------------------------------------- the block pool


def _hashes(tokens):
    return chain_hashes(tokens)


def test_blocks_are_found_by_their_whole_prefix():
    pool = BlockPool(8)
    a = list(range(40))  # 2 full blocks and a partial one
    blocks = pool.allocate(2)
    for b, h in zip(blocks, _hashes(a), strict=False):
        pool.register(b, h, ready=True)
    # the same first block, a different second one: only the first is shared
    b_tokens = a[:16] + [99] + a[17:]
    found, in_flight = pool.match(_hashes(b_tokens))
    assert found == blocks[:1] and not in_flight
    # the same second block's tokens after a different first block: nothing (hashes are chained)
    c_tokens = [7] * 16 + a[16:32]
    assert pool.match(_hashes(c_tokens)) == ([], False)
    # both blocks
    found, _ = pool.match(_hashes(a))
    assert found == blocks


def test_released_blocks_stay_findable_until_evicted_least_recently_used_first():
    pool = BlockPool(4)
    x, y = list(range(32)), list(range(100, 132))
    bx, by = pool.allocate(2), pool.allocate(2)
    for blocks, tokens in ((bx, x), (by, y)):
        for b, h in zip(blocks, _hashes(tokens), strict=True):
            pool.register(b, h, ready=True)
    held_x, held_y = list(bx), list(by)
    pool.release(bx)  # x first: x is the least recently released
    pool.release(by)
    assert pool.free_count() == 4 and pool.cached_count() == 4
    # one new block evicts x's tail (a sequence's last block goes before the blocks it builds on)
    (new,) = pool.allocate(1)
    assert new == held_x[1]
    assert pool.match(_hashes(x))[0] == held_x[:1]
    assert pool.match(_hashes(y))[0] == held_y
    pool.release([held_x[0]])
    pool.release(list(held_y))
    pool.release([new])  # never registered: plainly free
    assert pool.free_count() == 4


def test_a_block_in_flight_is_waited_for_and_forgotten_if_never_computed():
    pool = BlockPool(4)
    tokens = list(range(32))
    blocks = pool.allocate(2)
    hashes = _hashes(tokens)
    pool.register(blocks[0], hashes[0], ready=True)
    pool.register(blocks[1], hashes[1], ready=False)  # still being prefilled by its owner
    assert pool.peek(hashes) == (1, True)
    pool.release(blocks)  # the owner was aborted before computing block 1
    assert pool.peek(hashes) == (1, False)
    assert pool.free_count() == 4


def test_no_caching_shares_nothing():
    pool = BlockPool(4, caching=False)
    (b,) = pool.allocate(1)
    pool.register(b, _hashes(list(range(16)))[0], ready=True)
    assert pool.match(_hashes(list(range(16)))) == ([], False)
    pool.release([b])
    assert pool.free_count() == 4 and pool.cached_count() == 0


def test_hashes_are_content_addresses_not_python_hashes():
    tokens = list(range(BLOCK_SIZE * 3))
    assert chain_hashes(tokens) == chain_hashes(list(tokens))
    assert len(chain_hashes(tokens)[0]) == 16  # a 128-bit digest
    assert chain_hashes(tokens, 1, chain_hashes(tokens)[0]) == chain_hashes(tokens)[1:]
    assert chain_hashes(tokens, salt=b"adapter-1") != chain_hashes(tokens)


# --------------------------------------------------------------------------- the engine


def ask(question: str, history=(), system: str = SYSTEM, **kw) -> GenerateRequest:
    kw.setdefault("temperature", 0.0)
    kw.setdefault("max_new_tokens", 24)
    messages = [ChatMessage(role="system", content=system)]
    for user, answer in history:
        messages += [ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=answer)]
    messages.append(ChatMessage(role="user", content=question))
    return GenerateRequest(model="m", messages=messages, **kw)


def _engine(model, tok, caching: bool, name: str, **kw) -> Engine:
    kw.setdefault("kv_cache_tokens", 8192)
    kw.setdefault("max_num_batched_tokens", 128)
    return Engine(model, tok, EngineConfig(prefix_caching=caching, **kw), model_name=name).start()


def _hits(name: str) -> tuple[float, float]:
    def value(metric):
        return REGISTRY.get_sample_value(metric, {"model_name": name}) or 0.0

    return value("vllm:prefix_cache_queries_total"), value("vllm:prefix_cache_hits_total")


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def engines(request):
    """The same model twice, with and without prefix caching (fp32, and bf16 where the native
    kernels make prefill attention row for row what the decode computes)."""
    dtype = request.param
    if dtype == "bfloat16":
        from orchestr.engine import native

        if native.library() is None:
            pytest.skip("bf16 equality rests on the native kernels (no C compiler here)")
    model, tok = load_model(MODEL, device="cpu", dtype=dtype)
    on = _engine(model, tok, True, f"pc-on-{dtype}")
    off = _engine(model, tok, False, f"pc-off-{dtype}")
    yield on, off
    on.shutdown()
    off.shutdown()


def _both(engines, requests, together: bool = True):
    async def run(engine):
        if together:
            return await asyncio.gather(*[engine.generate(r) for r in requests])
        return [await engine.generate(r) for r in requests]

    return [asyncio.run(run(e)) for e in engines]


def test_shared_system_prompt_arriving_together_is_computed_once(engines):
    on, off = engines
    queried, hits = _hits(on.model_name)
    with_cache, without = _both(engines, [ask(q) for q in QUESTIONS])
    assert [r.text for r in with_cache] == [r.text for r in without]
    assert all(len(r.text) > 10 for r in with_cache)
    queried2, hits2 = _hits(on.model_name)
    shared = len(on.prepare(ask(QUESTIONS[0])).prompt_ids) // 2  # the system prompt is most of it
    # the three requests that arrived with the first waited for its blocks and reused them
    assert hits2 - hits >= 3 * (shared // BLOCK_SIZE) * BLOCK_SIZE
    assert queried2 - queried == sum(r.usage.prompt_tokens for r in with_cache)
    assert _hits(off.model_name)[1] == 0


def test_multi_turn_history_reuses_the_previous_turns(engines):
    on, _ = engines
    histories_on = [[] for _ in QUESTIONS[:2]]
    histories_off = [[] for _ in QUESTIONS[:2]]
    followups = ["And on Sundays?", "What if I am late?", "Thanks. Anything else?"]
    for turn in range(3):
        question = [QUESTIONS[i] if turn == 0 else followups[turn - 1] for i in range(2)]
        _, before = _hits(on.model_name)
        res_on, res_off = _both(engines, [ask(q, h) for q, h in zip(question, histories_on, strict=True)])
        _, after = _hits(on.model_name)
        for h_on, h_off, q, a, b in zip(histories_on, histories_off, question, res_on, res_off, strict=True):
            assert a.text == b.text
            h_on.append((q, a.text))
            h_off.append((q, b.text))
        if turn:
            # everything but the newest question (and the block it shares with the answer) was cached
            previous = sum(r.usage.prompt_tokens for r in res_on) - 2 * 40
            assert after - before >= previous
    assert histories_on == histories_off


def test_prompts_diverging_inside_a_block_share_only_whole_blocks(engines):
    on, _ = engines
    base = "Repeat after me exactly: " + "alpha beta gamma delta " * 12
    first, second = ask(base + "epsilon", system="Be terse."), ask(base + "zeta", system="Be terse.")
    _both(engines, [first])
    _, before = _hits(on.model_name)
    with_cache, without = _both(engines, [second])
    _, after = _hits(on.model_name)
    assert with_cache[0].text == without[0].text
    ids_a, ids_b = on.prepare(first).prompt_ids, on.prepare(second).prompt_ids
    common = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y)
    assert after - before == (common // BLOCK_SIZE) * BLOCK_SIZE


def test_echo_with_prompt_logprobs_and_structured_outputs_are_unchanged(engines):
    prompt = SYSTEM + "\nQuestion: which days are you open?\nAnswer:"
    echo = GenerateRequest(model="m", prompt=prompt, max_new_tokens=8, temperature=0, echo=True, logprobs=2,
                           prompt_logprobs=True)
    schema = {"type": "object", "properties": {"open": {"type": "boolean"}, "days": {"type": "integer"}},
              "required": ["open", "days"], "additionalProperties": False}
    structured = ask("Answer in JSON: are you open, and how many days a week?", guided_json=schema,
                     max_new_tokens=40)
    for _ in range(2):  # the second round finds everything cached
        with_cache, without = _both(engines, [echo, structured], together=False)
        assert with_cache[0].text == without[0].text
        lp_on = [(t.token, t.logprob) for t in with_cache[0].logprobs]
        lp_off = [(t.token, t.logprob) for t in without[0].logprobs]
        assert lp_on == lp_off
        assert with_cache[1].text == without[1].text


def test_eviction_under_memory_pressure_keeps_outputs_and_bounds_the_cache(engines):
    on, off = engines
    model, tok = on.model, on.tokenizer
    small = _engine(model, tok, True, f"pc-small-{on.dtype_name}", kv_cache_tokens=512)
    try:
        prompts = [ask(f"Topic {i}: tell me about the number {i * 7}.", system=f"Context {i}: " + SYSTEM[:400])
                   for i in range(5)]

        async def run(engine):
            return [await engine.generate(r) for r in prompts + prompts[:1]]

        squeezed, alone = asyncio.run(run(small)), asyncio.run(run(off))
        assert [r.text for r in squeezed] == [r.text for r in alone]
        assert small.blocks.cached_count() <= small.cache.num_blocks
        assert small.cache.free_tokens() == small.cache.capacity_tokens  # all released, some still cached
    finally:
        small.shutdown()
