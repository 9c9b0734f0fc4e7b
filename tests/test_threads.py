"""The engine's thread count: pinned, or chosen per step size from measured step times."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
import torch

from orchestr.config.serving import EngineConfig
from orchestr.engine import threads as th
from orchestr.engine.engine import Engine
from orchestr.engine.loader import load_model
from orchestr.engine.threads import ThreadPolicy, candidate_counts
from orchestr.protocol import ChatMessage, GenerateRequest

PROMPTS = ["Write a long story about a dragon who learns to bake bread.",
           "Explain in detail how a steam engine works.",
           "Write a long poem about the sea at night."]


def test_candidates():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(16) == [15, 16]


def test_pinned_never_changes():
    policy = ThreadPolicy(pinned=1, cores=2)
    assert not policy.adaptive and policy.describe() == "1 threads"
    for tokens in (1, 16, 300):
        assert policy.pick(tokens) == 1
        policy.record(tokens, 0.01)
    assert policy.current == 1


def _drive(policy: ThreadPolicy, tokens: int, cost: dict[int, float], steps: int) -> list[int]:
    """Steps whose time per token depends on the thread count as ``cost`` says."""
    used = []
    for _ in range(steps):
        n = policy.pick(tokens)
        used.append(n)
        policy.record(tokens, cost[n] * tokens)
    return used


def test_adaptive_tries_both_then_keeps_the_faster_per_step_size():
    policy = ThreadPolicy(cores=2)
    # small steps: one thread is faster; large steps: two threads are (clear cases: decided early)
    small = _drive(policy, 1, {1: 0.030, 2: 0.040}, 50)
    large = _drive(policy, 32, {1: 0.004, 2: 0.002}, 50)
    trial = 2 * th.MIN_TRIAL
    assert sorted(set(small[:trial])) == [1, 2] and set(small[trial:]) == {1}
    assert sorted(set(large[:trial])) == [1, 2] and set(large[trial:]) == {2}
    # the two buckets keep their own choice
    assert policy.pick(1) == 1 and policy.pick(40) == 2


def test_overlapping_samples_are_decided_by_median():
    policy = ThreadPolicy(cores=2)
    # two threads faster in the median, but one of their samples is the slowest of all
    times = {1: iter([0.010, 0.011, 0.010, 0.011]), 2: iter([0.012, 0.008, 0.008, 0.008])}
    used = []
    for _ in range(2 * th.TRIAL_STEPS):
        n = policy.pick(16)
        used.append(n)
        policy.record(16, next(times[n]) * 16)
    assert used.count(1) == used.count(2) == th.TRIAL_STEPS
    assert policy.pick(16) == 2


def test_close_medians_take_more_cycles_before_a_verdict():
    policy = ThreadPolicy(cores=2)
    times = {1: iter([0.0100, 0.0096] * th.WINDOW), 2: iter([0.0099, 0.0097] * th.WINDOW)}  # 1 % apart
    used = []
    for _ in range(2 * th.WINDOW + 4):
        n = policy.pick(16)
        used.append(n)
        policy.record(16, next(times[n]) * 16)
    assert used[: 2 * th.WINDOW].count(1) == used[: 2 * th.WINDOW].count(2) == th.WINDOW
    assert set(used[2 * th.WINDOW:]) == {policy.pick(16)}


def test_adaptive_follows_a_change_of_load():
    policy = ThreadPolicy(cores=2)
    _drive(policy, 16, {1: 0.003, 2: 0.002}, 100)
    assert policy.pick(16) == 2
    # the machine gets busy: two threads now lose; their own drift triggers a new trial
    used = _drive(policy, 16, {1: 0.003, 2: 0.006}, 100)
    assert used[-1] == 1
    assert used.count(2) <= th.WINDOW + th.TRIAL_STEPS  # it did not stay on the slower count


def test_a_steady_load_pays_for_no_trials():
    policy = ThreadPolicy(cores=2)
    used = _drive(policy, 1, {1: 0.014, 2: 0.022}, th.REVISIT_EVERY - 10)
    assert used[2 * th.MIN_TRIAL:] == [1] * (len(used) - 2 * th.MIN_TRIAL)
    # ... until the long re-check interval, which tries the other count again
    used = _drive(policy, 1, {1: 0.014, 2: 0.022}, 20)
    assert 2 in used and used[-1] == 1


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(th.machine_cores() < 2 or not os.path.isdir("/proc/self/task"), reason="needs 2 cores, Linux")
def test_leave_cores_to_engine_frees_the_callers_openmp_workers():
    """What Engine.start() calls before starting its thread: the caller (the thread that loaded
    the model) must not keep OpenMP workers, since with pools beside the engine's libgomp stops
    spin-waiting and every parallel region of a step pays a sleep and a wake-up (half the speed
    at c=1 on a 2-core machine)."""
    seen = {}

    def caller():
        torch.set_num_threads(2)
        torch.ones(1 << 22).sum()  # a parallel region: this thread now has an OpenMP worker
        seen["before"] = _os_threads()
        th.leave_cores_to_engine()
        deadline = time.monotonic() + 5
        while _os_threads() >= seen["before"] and time.monotonic() < deadline:
            time.sleep(0.01)  # the freed worker exits on its own
        seen["after"] = _os_threads()
        seen["threads"] = torch.get_num_threads()

    t = threading.Thread(target=caller)
    t.start()
    t.join()
    assert seen["after"] == seen["before"] - 1
    assert seen["threads"] == 2  # the caller's own setting is left alone


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def model_of_dtype(request):
    return load_model("embedded://SmolLM2-135M-Instruct", device="cpu", dtype=request.param)


def _greedy(engine: Engine) -> list[str]:
    async def run():
        reqs = [GenerateRequest(model="m", messages=[ChatMessage(role="user", content=p)], temperature=0.0,
                                max_new_tokens=24) for p in PROMPTS]
        return await asyncio.gather(*[engine.generate(r) for r in reqs])
    return [r.text for r in asyncio.run(run())]


def test_outputs_do_not_depend_on_the_thread_count(model_of_dtype):
    """Switching counts between steps must not change what greedy decoding produces (fp32 and
    bf16: the bf16 engine runs orchestr's C kernels, parallel over OpenMP threads)."""
    model, tok = model_of_dtype
    texts = {}
    for threads in (1, 2, None):
        engine = Engine(model, tok, EngineConfig(max_batch_size=4, kv_cache_tokens=4096), threads=threads).start()
        try:
            texts[threads] = _greedy(engine)
            if threads is None and th.machine_cores() > 1:
                # the adaptive engine really ran steps under both counts
                measured = {n for b in engine.threads._buckets.values() for n, s in b.samples.items() if s}
                assert measured == set(candidate_counts(th.machine_cores()))
        finally:
            engine.shutdown()
    assert texts[1] == texts[2] == texts[None]
    assert all(len(t) > 40 for t in texts[1])
