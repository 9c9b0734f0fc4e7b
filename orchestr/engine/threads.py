"""How many CPU threads the model gets, step by step.

A fixed count is wrong somewhere: on a 2-core box one thread leaves a core to the HTTP side
(API server, controller, the worker's own event loop), two threads finish a batched step
sooner when that side is idle, and which wins depends on the machine, on the batch and on
whatever else runs there. So unless ``engine.num_threads`` pins a count, the engine measures:
for each size of step (tokens in the forward, by powers of two) it times steps under each
candidate count, takes the one with the lowest time per token, and re-checks the others now
and then, since the rest of the machine's load changes. The engine times whole cycles, from
one step's start to the next's: the forward and sampling, and the per-token work between
steps that competes with the HTTP side for the GIL and the cores. So a thread count whose
threads get descheduled (the barrier stall that makes two threads lose under load), or that
starves the serving side, is seen as the slower choice.

One thread of the process runs torch multi-threaded: the engine's. torch's OpenMP runtime
(libgomp) keeps a pool of worker threads for every thread that ever ran a parallel region with
more than one thread, and once the pools together hold more threads than the machine has cores
it stops spin-waiting between regions in every pool: each of the ~120 parallel regions of a
decode step then sleeps and wakes its workers (~40 us each on this project's 2-vCPU machines).
The thread that loads the model (two threads by default) leaves such a pool behind, so before
the engine thread starts, :func:`leave_cores_to_engine` frees the starting thread's pool. Measured
on the embedded model, engine alone, two threads: c=1 47 tok/s with the loader's pool alive,
92 tok/s with it freed (one thread: 78); c=16 842 vs 583 with one thread.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections import deque
from dataclasses import dataclass, field

import torch

from orchestr.engine import native

log = logging.getLogger(__name__)

MIN_TRIAL = 2  # samples of each candidate before a bucket may pick one (if they do not overlap)
TRIAL_STEPS = 4  # samples of each candidate after which a bucket picks by median anyway
WINDOW = 8  # recent samples kept per candidate and bucket
DRIFT = 0.2  # the chosen count's time per token moved this much since the verdict: try the others again
REVISIT_EVERY = 400  # cycles of a bucket after which the others are tried again anyway
CLOSE = 0.05  # medians this close after TRIAL_STEPS each: keep sampling, up to WINDOW each


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def leave_cores_to_engine() -> None:
    """Free the calling thread's OpenMP workers so that the engine thread's own are the only
    ones (see the module's docstring); the caller keeps its thread count, and a later parallel
    region of its own makes its pool again (the engine then measures itself slower with all
    cores and the policy adapts)."""
    if not native.release_thread_pool():
        log.debug("cannot free the caller's OpenMP threads; the engine's parallel regions may be slower")


PREFILL_STEP_TOKENS = 128  # steps at least this large always use all cores (see ThreadPolicy.pick)


def candidate_counts(cores: int) -> list[int]:
    """All cores, or all but one (left to the serving side): the two choices that matter."""
    return sorted({max(1, cores - 1), cores})


@dataclass
class _Bucket:
    samples: dict[int, deque] = field(default_factory=dict)  # threads -> recent seconds per token
    steps: int = 0  # cycles since the last verdict
    best: int | None = None  # None while trying the candidates
    verdict_time: float = 0.0  # the best's median seconds per token when it was chosen
    last: int | None = None  # the previous verdict (logged when it changes)


class ThreadPolicy:
    """``pick(tokens)`` before a step, ``record(tokens, seconds)`` once its cycle is over.

    Pinned (one candidate): always that count. Adaptive: per bucket of step size, try the
    candidates in turn until :meth:`_verdict` names the faster, then use it. When the chosen
    count's own time per token has moved by ``DRIFT`` since (the load or the batch changed), or
    after ``REVISIT_EVERY`` cycles anyway, forget the others' samples so that they are tried
    again; a steady load pays for no trials (the chosen count's window is always fresh)."""

    def __init__(self, pinned: int | None = None, cores: int | None = None) -> None:
        self.candidates = [pinned] if pinned else candidate_counts(cores or machine_cores())
        self.current = self.candidates[-1] if pinned else self.candidates[0]
        self._buckets: dict[int, _Bucket] = {}  # the engine thread applies self.current (torch's count is per thread)

    @property
    def adaptive(self) -> bool:
        return len(self.candidates) > 1

    def pick(self, tokens: int) -> int:
        """The thread count for a step of ``tokens`` tokens (applied to torch and the kernels).
        Prefill-sized steps take all cores without trials: their large products scale with the
        cores, and a trial costs a whole long step (a cold long prompt on a fresh worker ran half
        its chunks on one thread: 3.8 s instead of 2.3)."""
        if self.adaptive:
            if tokens >= PREFILL_STEP_TOKENS:
                self._use(self.candidates[-1])
            else:
                self._use(self._choose(self._bucket(tokens)))
        return self.current

    def record(self, tokens: int, seconds: float) -> None:
        if not self.adaptive or tokens <= 0 or tokens >= PREFILL_STEP_TOKENS:
            return
        bucket = self._bucket(tokens)
        bucket.samples.setdefault(self.current, deque(maxlen=WINDOW)).append(seconds / tokens)
        bucket.steps += 1
        if bucket.best is None:  # trying the candidates
            bucket.best = self._verdict(bucket)
            if bucket.best is not None:
                bucket.steps = 0
                bucket.verdict_time = statistics.median(bucket.samples[bucket.best])
                if bucket.best != bucket.last:
                    log.info("engine threads: %d for steps of about %d tokens (median ms/token %s)", bucket.best,
                             tokens, ", ".join(f"{n}: {1e3 * statistics.median(bucket.samples[n]):.2f}"
                                               for n in self.candidates))
                    bucket.last = bucket.best
        elif self.current == bucket.best and self._stale(bucket):  # try the others again
            for n in self.candidates:
                if n != bucket.best:
                    bucket.samples[n].clear()
            bucket.best = None

    @staticmethod
    def _stale(bucket: _Bucket) -> bool:
        if bucket.steps >= REVISIT_EVERY:
            return True
        recent = bucket.samples[bucket.best]
        if bucket.steps < WINDOW or len(recent) < WINDOW:
            return False
        return abs(statistics.median(recent) - bucket.verdict_time) > DRIFT * bucket.verdict_time

    def _verdict(self, bucket: _Bucket) -> int | None:
        """The faster candidate once the samples say so: after ``MIN_TRIAL`` each if every
        sample of one is below every sample of the others (a clear case, e.g. a big prefill),
        else after ``TRIAL_STEPS`` each by median (``WINDOW`` each when the medians are within
        ``CLOSE``); None while still trying."""
        samples = {n: bucket.samples.get(n, ()) for n in self.candidates}
        fewest = min(len(s) for s in samples.values())
        if fewest < MIN_TRIAL:
            return None
        if fewest >= TRIAL_STEPS:
            medians = sorted((statistics.median(samples[n]), n) for n in self.candidates)
            if fewest < WINDOW and medians[1][0] - medians[0][0] < CLOSE * medians[0][0]:
                return None  # too close to call on so few cycles
            return medians[0][1]
        best = min(self.candidates, key=lambda n: max(samples[n]))
        if all(max(samples[best]) < min(samples[n]) for n in self.candidates if n != best):
            return best
        return None

    def _bucket(self, tokens: int) -> _Bucket:
        key = max(1, tokens).bit_length()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        return bucket

    def _choose(self, bucket: _Bucket) -> int:
        if bucket.best is not None:
            return bucket.best
        # trying: the candidate with the fewest samples, staying on the current one on a tie
        counts = {n: len(bucket.samples.get(n, ())) for n in self.candidates}
        return min(self.candidates, key=lambda n: (counts[n], n != self.current))

    def _use(self, threads: int) -> None:
        if threads != self.current:
            torch.set_num_threads(threads)
            self.current = threads

    def describe(self) -> str:
        if not self.adaptive:
            return f"{self.current} threads"
        return "adaptive threads (" + " or ".join(str(n) for n in self.candidates) + ")"
