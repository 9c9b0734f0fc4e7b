"""The batching engine on the real embedded model (fp32 where outputs are compared)."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from orchestr.config.serving import EngineConfig
from orchestr.engine.engine import Engine
from orchestr.engine.loader import load_model
from orchestr.protocol import (
    ChatMessage,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    TokenLogprob,
    UsageInfo,
    coalesce_chunks,
)

MODEL = "embedded://SmolLM2-135M-Instruct"
STORY_PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a steam engine works.",
    "Write a long poem about the sea at night.",
    "Describe a busy market in a medieval city, with many details.",
]


def chat(text: str, **kw) -> GenerateRequest:
    kw.setdefault("temperature", 0.0)
    return GenerateRequest(model="m", messages=[ChatMessage(role="user", content=text)], **kw)


@pytest.fixture(scope="module")
def fp32_model():
    return load_model(MODEL, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def batched(fp32_model):
    model, tok = fp32_model
    engine = Engine(model, tok, EngineConfig(batching=True, max_batch_size=8, max_num_batched_tokens=128,
                                             kv_cache_tokens=8192)).start()
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def unbatched(fp32_model):
    model, tok = fp32_model
    engine = Engine(model, tok, EngineConfig(batching=False, kv_cache_tokens=8192)).start()
    yield engine
    engine.shutdown()


async def _collect(engine: Engine, req: GenerateRequest, log: list | None = None) -> tuple[str, object]:
    parts, last = [], None
    async for chunk in engine.generate_stream(req):
        parts.append(chunk.text)
        last = chunk
        if log is not None:
            log.append((time.monotonic(), chunk))
    return "".join(parts), last


def test_greedy_batched_equals_unbatched(batched, unbatched):
    async def run():
        together = await asyncio.gather(*[batched.generate(chat(p, max_new_tokens=40)) for p in STORY_PROMPTS])
        alone = [await unbatched.generate(chat(p, max_new_tokens=40)) for p in STORY_PROMPTS]
        return together, alone

    together, alone = asyncio.run(run())
    for b, u in zip(together, alone, strict=True):
        assert u.usage.completion_tokens == 40 and u.finish_reason == "length"
        assert b.usage.completion_tokens == u.usage.completion_tokens
        assert b.text == u.text
        assert len(b.text) > 80


def test_unbatched_matches_transformers_generate(unbatched):
    """The paged attention path gives what the model's stock `generate` gives."""
    import torch

    req = chat(STORY_PROMPTS[1], max_new_tokens=32)
    ours = asyncio.run(unbatched.generate(req))
    prompt = unbatched.prepare(req).prompt_ids
    # a fresh copy: the engine's own has its attention/norms swapped for the fused CPU ones
    model, tok = load_model(MODEL, device="cpu", dtype="float32")
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
    assert ours.text == tok.decode(out[0][len(prompt):], skip_special_tokens=True)


def test_request_arriving_mid_batch_is_served(batched):
    async def run():
        log_a: list = []
        first = asyncio.create_task(_collect(batched, chat(STORY_PROMPTS[0], max_new_tokens=150), log_a))
        while len(log_a) < 5:
            await asyncio.sleep(0.02)
        late_text, late_last = await _collect(batched, chat("What is the capital of France?", max_new_tokens=20))
        still_running = not first.done()
        await first
        return late_text, late_last, still_running

    text, last, overlapped = asyncio.run(run())
    assert "Paris" in text and last.finish_reason in ("stop", "length")
    assert overlapped, "the late request should have finished while the first was still decoding"


def test_disconnected_client_frees_its_slot(fp32_model):
    model, tok = fp32_model
    engine = Engine(model, tok, EngineConfig(batching=True, max_batch_size=2, kv_cache_tokens=4096)).start()
    try:
        async def run():
            stream = engine.generate_stream(chat(STORY_PROMPTS[0], max_new_tokens=400))
            for _ in range(3):
                await stream.__anext__()
            long_b = asyncio.create_task(_collect(engine, chat(STORY_PROMPTS[1], max_new_tokens=400)))
            await asyncio.sleep(0.3)
            assert engine.queue_length == 2
            await stream.aclose()  # the client goes away mid-stream
            # with both slots taken, this request can only run if the closed one left
            third = await asyncio.wait_for(_collect(engine, chat("Say hi.", max_new_tokens=8)), timeout=120)
            b_running = not long_b.done()
            long_b.cancel()
            return third, b_running

        (text, last), b_running = asyncio.run(run())
        assert last.finish_reason in ("stop", "length") and text
        assert b_running
        deadline = time.monotonic() + 10
        while engine.queue_length and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.queue_length == 0
        assert engine.cache.free_tokens() == engine.cache.capacity_tokens
    finally:
        engine.shutdown()


def test_long_prompt_does_not_stall_running_streams(fp32_model):
    model, tok = fp32_model
    engine = Engine(model, tok, EngineConfig(batching=True, max_batch_size=4, max_num_batched_tokens=64,
                                             kv_cache_tokens=8192)).start()
    long_text = "Summarise the following notes. " + " ".join(
        f"Note {i}: the delivery of item {i} was delayed by {i % 7} days." for i in range(90))
    try:
        async def run():
            logs: list[list] = [[], []]
            streams = [asyncio.create_task(_collect(engine, chat(p, max_new_tokens=300), logs[i]))
                       for i, p in enumerate(STORY_PROMPTS[:2])]
            while min(len(x) for x in logs) < 3:
                await asyncio.sleep(0.02)
            submitted = time.monotonic()
            long_log: list = []
            long_task = asyncio.create_task(_collect(engine, chat(long_text, max_new_tokens=4), long_log))
            while not long_log:
                await asyncio.sleep(0.01)
            first_token_at = long_log[0][0]
            for s in streams:
                s.cancel()
            await long_task
            return logs, submitted, first_token_at

        logs, submitted, first_at = asyncio.run(run())
        assert len(engine.prepare(chat(long_text)).prompt_ids) > 1000
        for log in logs:
            during = [t for t, _ in log if submitted <= t <= first_at]
            # 1000+ prompt tokens at 64 per step is 16+ steps: the streams decode meanwhile
            assert len(during) >= 5, f"a running stream got only {len(during)} chunks while the long prompt prefilled"
    finally:
        engine.shutdown()


def test_stop_string_spanning_tokens_and_stop_token_ids(batched):
    tok = batched.tokenizer
    question = "What is the capital of France?"
    ref = asyncio.run(batched.generate(chat(question, max_new_tokens=20))).text
    assert "Paris" in ref
    stop = "of Fr"  # spans token boundaries
    text, last = asyncio.run(_collect(batched, chat(question, max_new_tokens=20, stop=[stop])))
    assert text == ref[: ref.index(stop)] and last.finish_reason == "stop"

    ids = tok(ref, add_special_tokens=False)["input_ids"]
    res = asyncio.run(batched.generate(chat(question, max_new_tokens=20, stop_token_ids=[ids[3]])))
    assert res.finish_reason == "stop"
    assert res.usage.completion_tokens == 4
    assert res.text == tok.decode(ids[:3])


def test_a_reader_that_falls_behind_gets_the_queued_tokens_as_one_chunk(batched):
    """A consumer that sleeps between reads (a loaded HTTP side) receives fewer, larger deltas,
    and nothing is lost: same text, usage and finish as the non-streaming call."""
    req = chat(STORY_PROMPTS[0], max_new_tokens=40)
    ref = asyncio.run(batched.generate(req))

    async def slow_reader():
        chunks = []
        async for chunk in batched.generate_stream(req):
            chunks.append(chunk)
            await asyncio.sleep(0.3)  # several engine steps (even on a loaded machine)
        return chunks

    chunks = asyncio.run(slow_reader())
    assert "".join(c.text for c in chunks) == ref.text
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage == ref.usage
    assert len(chunks) < 20  # 40 tokens; one chunk per token without merging


def test_a_continuation_resumes_where_the_stream_broke_off(batched):
    """Chunks carry their tokens' ids; a request resumed from the prompt plus the first k of them
    (``continuation_of``) generates the rest of the greedy answer, structured outputs included
    (the grammar is advanced over the resumed tokens)."""

    async def stream(req):
        return [c async for c in batched.generate_stream(req)]

    req = chat(STORY_PROMPTS[0], max_new_tokens=24)
    chunks = asyncio.run(stream(req))
    ids = [t for c in chunks for t in (c.token_ids or [])]
    assert len(ids) == chunks[-1].usage.completion_tokens == 24
    text = "".join(c.text for c in chunks)
    assert batched.tokenizer.decode(ids) == text
    k = 9
    rest = asyncio.run(stream(req.continuation_of(ids[:k])))
    assert [t for c in rest for t in (c.token_ids or [])] == ids[k:]
    assert text.endswith("".join(c.text for c in rest))
    assert rest[-1].usage.completion_tokens == 24 - k  # the resumed ids count as its prompt
    assert rest[-1].usage.prompt_tokens == chunks[-1].usage.prompt_tokens + k

    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    shaped = chat("Describe a person as JSON.", max_new_tokens=40, guided_json=schema)
    whole = asyncio.run(stream(shaped))
    ids = [t for c in whole for t in (c.token_ids or [])]
    rest = asyncio.run(stream(shaped.continuation_of(ids[:5])))
    assert batched.tokenizer.decode(ids[:5]) + "".join(c.text for c in rest) == "".join(c.text for c in whole)


def test_coalesce_chunks_merges_only_what_loses_nothing():
    lp = [TokenLogprob(token="a", logprob=-0.1)], [TokenLogprob(token="b", logprob=-0.2)]
    chunks = [GenerateChunk(text="prompt", usage=UsageInfo(prompt_tokens=3)), GenerateChunk(text="He"),
              GenerateChunk(text="llo", usage=UsageInfo(prompt_tokens=3, completion_tokens=2)),
              GenerateChunk(text="!", finish_reason="stop", usage=UsageInfo(prompt_tokens=3, completion_tokens=3))]
    merged = coalesce_chunks(chunks[:3])
    assert [(c.text, c.finish_reason, c.usage.completion_tokens) for c in merged] == [("promptHello", None, 2)]
    merged = coalesce_chunks(chunks)
    assert [(c.text, c.finish_reason) for c in merged] == [("promptHello!", "stop")]
    assert GenerateResult.from_chunks(merged) == GenerateResult.from_chunks(chunks)
    with_lps = coalesce_chunks([GenerateChunk(text="a", logprobs=lp[0]), GenerateChunk(text="b", logprobs=lp[1])])
    assert len(with_lps) == 1 and [t.token for t in with_lps[0].logprobs] == ["a", "b"]
    kept = [GenerateChunk(text="a"), GenerateChunk(text="b", logprobs=lp[1]),  # logprobs on one side only
            GenerateChunk(error="boom", error_code=50001, finish_reason="error")]
    assert coalesce_chunks(kept) == kept
    assert coalesce_chunks([GenerateChunk(text="x", finish_reason="stop"), GenerateChunk(text="y")])[0].text == "x"


def test_sampling_seed_and_penalties(batched):
    req = dict(temperature=0.9, top_p=0.9, top_k=50, max_new_tokens=24, seed=1234)
    a = asyncio.run(batched.generate(chat(STORY_PROMPTS[2], **req)))
    b = asyncio.run(batched.generate(chat(STORY_PROMPTS[2], **req)))
    assert a.text == b.text and a.text
    c = asyncio.run(batched.generate(chat(STORY_PROMPTS[2], frequency_penalty=1.5, presence_penalty=1.0,
                                          repetition_penalty=1.3, max_new_tokens=24)))
    assert c.text and c.usage.completion_tokens > 0


def test_errors_and_echo(batched):
    # out-of-range sampling values are refused by the shared protocol before any engine sees them
    with pytest.raises(ValidationError, match="temperature"):
        chat("hi", temperature=-1)
    huge = "word " * 9000
    res = asyncio.run(batched.generate(GenerateRequest(model="m", prompt=huge)))
    assert res.finish_reason == "error" and "context" in res.error
    res = asyncio.run(batched.generate(GenerateRequest(model="m", prompt="The sky is", echo=True,
                                                       temperature=0, max_new_tokens=5)))
    assert res.text.startswith("The sky is") and len(res.text) > len("The sky is")


def test_load_8bit_generates_text():
    engine = Engine.from_pretrained(MODEL, EngineConfig(kv_cache_tokens=2048), device="cpu", load_8bit=True)
    try:
        assert engine.dtype_name == "int8"
        res = asyncio.run(engine.generate(chat("What is the capital of France?", max_new_tokens=16)))
        assert res.text.strip() and res.usage.completion_tokens > 0
    finally:
        engine.shutdown()


def test_embeddings_are_normalised(batched):
    from orchestr.protocol import EmbeddingRequest

    res = asyncio.run(batched.embed(EmbeddingRequest(model="m", input=["hello world", "a cat sat on the mat"])))
    assert len(res.embedding) == 2 and res.token_num > 4
    for vec in res.embedding:
        assert abs(sum(x * x for x in vec) - 1.0) < 1e-3
    # and generation still works after the plain forward
    assert asyncio.run(batched.generate(chat("Say hi.", max_new_tokens=4))).text


def test_long_embeddings_run_in_chunks_beside_generation_and_stop_when_abandoned(batched):
    """An embedding input is prefilled in chunks inside the batch (budget 128 here): a chat
    started meanwhile finishes before it; the pooled vector equals one whole forward's; a
    cancelled request leaves the engine at once."""
    import torch

    from orchestr.protocol import EmbeddingRequest

    text = " ".join(f"Sentence {i} says that {i * 13 % 97} is a number." for i in range(120))
    req = EmbeddingRequest(model="m", input=[text, text[:200]])

    async def run():
        embedding = asyncio.create_task(batched.embed(req))
        await asyncio.sleep(0.2)
        chat_text, _ = await _collect(batched, chat("Say hi.", max_new_tokens=4))
        chat_first = not embedding.done()
        res = await embedding
        whole = await batched._call(batched._embed_ids, batched.tokenizer(text)["input_ids"])
        return res, whole, chat_text, chat_first

    res, whole, chat_text, chat_first = asyncio.run(run())
    assert chat_text and chat_first, "the chat should not wait for the embedding's whole input"
    assert res.token_num > 1200 and len(res.embedding) == 2
    assert torch.nn.functional.cosine_similarity(torch.tensor(res.embedding[0]), torch.tensor(whole), dim=0) > 0.9999

    async def abandon():
        task = asyncio.create_task(batched.embed(EmbeddingRequest(model="m", input=[text] * 4)))
        await asyncio.sleep(0.5)
        task.cancel()
        deadline = time.monotonic() + 10
        while batched.queue_length and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return batched.queue_length

    assert asyncio.run(abandon()) == 0


def test_bf16_engine_with_packed_weights():
    """bf16 on CPU runs through oneDNN-packed linears (when the CPU has bf16), the C kernels
    and the flat forward: same text as transformers' own modules (optimize=False) on short
    greedy answers."""
    from orchestr.engine.cpu_linear import can_pack

    model, tok = load_model(MODEL, device="cpu", dtype="bfloat16")
    packable = can_pack(model)
    engine = Engine(model, tok, EngineConfig(kv_cache_tokens=2048)).start()
    try:
        if packable:
            assert type(model.lm_head).__name__ == "PackedLinear"
        from orchestr.engine import native

        if native.library() is not None:  # the C kernels, fused layers and the flat forward are in use
            assert engine.flat_forward is not None
            assert type(model.model.layers[0].self_attn).__name__ == "FusedAttention"
        reqs = [chat("What is the capital of France?", max_new_tokens=12), chat(STORY_PROMPTS[0], max_new_tokens=12)]

        async def run():
            return await asyncio.gather(*[engine.generate(r) for r in reqs])

        packed = asyncio.run(run())
        assert "Paris" in packed[0].text
        plain_model, _ = load_model(MODEL, device="cpu", dtype="bfloat16")
        plain = Engine(plain_model, tok, EngineConfig(kv_cache_tokens=2048), optimize=False).start()
        try:
            assert asyncio.run(plain.generate(reqs[0])).text == packed[0].text
            assert asyncio.run(plain.generate(reqs[1])).text == packed[1].text
        finally:
            plain.shutdown()
    finally:
        engine.shutdown()


@pytest.mark.parametrize(("prefix_caching", "kv_tokens"), [(False, 224), (True, 160)])
def test_kv_cache_exhaustion_preempts_and_recomputes(fp32_model, unbatched, prefix_caching, kv_tokens):
    """A pool too small for all running sequences: the youngest is preempted (its blocks
    freed) and recomputed later; every request still gets the same greedy text. With prefix
    caching the prompts share their template's system-prompt blocks, so the pool is smaller."""
    model, tok = fp32_model
    engine = Engine(model, tok, EngineConfig(batching=True, max_batch_size=4, kv_cache_tokens=kv_tokens,
                                             prefix_caching=prefix_caching)).start()
    prompts = STORY_PROMPTS[:3]
    try:
        async def run():
            return await asyncio.gather(*[engine.generate(chat(p, max_new_tokens=40)) for p in prompts])

        squeezed = asyncio.run(run())
        alone = [asyncio.run(unbatched.generate(chat(p, max_new_tokens=40))) for p in prompts]
        assert [r.text for r in squeezed] == [r.text for r in alone]
        assert engine.preemptions > 0
        assert engine.cache.free_tokens() == engine.cache.capacity_tokens
    finally:
        engine.shutdown()


def test_a_short_request_does_not_wait_for_a_long_prompts_forward(fp32_model, unbatched):
    """A short chat sent while a long prompt is being prefilled gets its answer first: the long
    forward pauses between layers, a step serves the short request, and the long one resumes
    where it stopped. Both answers are what each gets alone."""
    model, tok = fp32_model
    engine = Engine(model, tok, EngineConfig(max_num_batched_tokens=512, kv_cache_tokens=8192,
                                             prefix_caching=False)).start()
    long_req = chat("Summarise this text: " + " ".join(f"item {i} is {i * 37 % 101}." for i in range(300)),
                    max_new_tokens=8)
    short_req = chat("Say hi.", max_new_tokens=4)
    try:
        async def run():
            log: list = []
            first = asyncio.create_task(_collect(engine, long_req, log))
            shorts = []
            while not first.done() and engine.interrupts == 0 and len(shorts) < 20:
                await asyncio.sleep(0.05)
                if engine.queue_length == 1 and engine.sched.running and engine.sched.running[0].kv_len == 0:
                    continue  # the long prompt's first chunk has not started yet
                shorts.append(await _collect(engine, short_req))
                shorts[-1] = (*shorts[-1], first.done())
            return await first, shorts

        (long_text, _), shorts = asyncio.run(run())
        assert engine.interrupts > 0, "no short request arrived during a long forward"
        alone_long = asyncio.run(unbatched.generate(long_req)).text
        alone_short = asyncio.run(unbatched.generate(short_req)).text
        assert long_text == alone_long
        assert all(text == alone_short for text, _, _ in shorts)
        assert not shorts[-1][2], "the short request should have finished before the long one"
    finally:
        engine.shutdown()
