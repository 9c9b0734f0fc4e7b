"""Which sequences run in the next forward, and how many of their tokens.

Each step packs, under a token budget (``max_num_batched_tokens``):
1. one token for every decoding sequence (a stream never waits for a prefill for long);
2. prefill tokens of sequences still reading their prompt (or their history after a
   preemption), fewest remaining tokens first, so a new short request starts in the next
   step even while a long prompt is being read; the oldest prefilling sequence always keeps
   a quarter of the budget, so short traffic cannot starve a long prompt. A token deep into
   a long history costs more (its attention), so chunks there are shorter and a step's time,
   not just its token count, stays bounded;
3. newly admitted sequences, each starting after the blocks of its prompt that the prefix
   cache already holds (see block_pool). A sequence whose next prompt block another sequence
   is computing right now waits a step rather than computing the same tokens twice.

When the KV pool runs dry the youngest sequence is preempted: its blocks go back (findable in
the prefix cache until evicted) and it is recomputed later.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Collection
from typing import Any

from orchestr.config.serving import EngineConfig
from orchestr.engine import paged_attention as pa
from orchestr.engine.sequence import Sequence
from orchestr.protocol import ErrorCode

Plan = list[tuple[Sequence, int]]
log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, cache: pa.PagedKVCache, config: EngineConfig, metrics: Any,
                 attention_span: float | None = None) -> None:
        self.cache = cache
        self.blocks = cache.pool
        self.metrics = metrics
        self.batching = config.batching
        self.max_batch = max(1, config.max_batch_size) if self.batching else 1
        self.token_budget = max(1, config.max_num_batched_tokens)
        # history length at which a prefill token's attention costs as much as the rest of it
        # (None: count tokens only)
        self.attention_span = attention_span if attention_span and attention_span > 0 else None
        # a prompt with at most this many tokens left is "short": it is prefilled whole, first
        self.short_prompt = max(1, self.token_budget // 4)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        self._active = 0  # submitted and not finished (waiting + running), read by other threads
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- bookkeeping
    @property
    def active(self) -> int:
        return self._active

    def submitted(self) -> None:
        """A request was handed to the engine thread (called on the caller's thread)."""
        with self._lock:
            self._active += 1

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def retire(self, seq: Sequence) -> None:
        """``seq`` finished (or was dropped): it leaves the batch and gives its blocks back."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        else:
            return
        seq.table.release(self.cache)
        with self._lock:
            self._active -= 1

    def find(self, request_id: str) -> Sequence | None:
        for seq in list(self.waiting) + self.running:
            if seq.request_id == request_id:
                return seq
        return None

    # ---------------------------------------------------------------- one step
    def schedule(self, exclude: Collection[Sequence] = ()) -> Plan:
        """The next forward's sequences and token counts, their KV blocks allocated. Sequences
        in ``exclude`` (a paused forward's) are neither scheduled nor preempted, and the step
        then serves short prompts only (it runs while the paused one waits)."""
        budget = self.token_budget if self.batching else 1 << 30
        short_only = bool(exclude)
        decodes = [s for s in self.running if s.is_decoding and s not in exclude]
        plan: Plan = [(s, 1) for s in decodes]
        budget -= len(decodes)
        prefilling = [s for s in self.running if not s.is_decoding and s not in exclude
                      and (not short_only or s.num_pending <= self.short_prompt)]
        if budget > 0:  # long prompts in progress do not hold new requests back (see _share)
            prefilling += self._admit(budget - sum(s.num_pending for s in prefilling
                                                   if s.num_pending <= self.short_prompt), short_only)
        plan += self._share(prefilling, budget)
        plan = self._allocate(plan, exclude)
        for seq, _ in plan:  # prompt blocks about to be computed: findable as in flight
            self._register_in_flight(seq)
        return plan

    def _share(self, prefilling: list[Sequence], budget: int) -> Plan:
        """Prefill tokens for this step: fewest remaining tokens first (a short prompt is read
        whole in the next step, even beside a long one), while the oldest prefilling sequence
        always keeps a quarter of the budget (short traffic cannot starve a long prompt)."""
        if budget <= 0 or not prefilling:
            return []
        oldest = prefilling[0]
        reserved = 0
        if len(prefilling) > 1:
            reserved = min(self.token_budget // 4, self._cost(oldest.kv_len, oldest.num_pending), budget)
        plan: Plan = []
        left = budget - reserved
        for seq in sorted(prefilling[1:], key=lambda s: s.num_pending):
            n = self._fit(seq, left)
            if n <= 0:
                break
            plan.append((seq, n))
            left -= self._cost(seq.kv_len, n)
        # the oldest always moves (at least a token): whatever the cost model says, no livelock
        n = max(1, self._fit(oldest, left + reserved)) if left + reserved >= 1 else 0
        if n > 0:
            plan.insert(0, (oldest, min(n, oldest.num_pending)))
        return plan

    def _cost(self, start: int, n: int) -> float:
        """What ``n`` prefill tokens after ``start`` cached ones cost, in tokens of a short
        history: each also attends to everything before it, which past a few thousand tokens
        costs more than its own projections (so a step's time stays bounded, not its tokens)."""
        if self.attention_span is None:
            return n
        return n * (1.0 + (start + n / 2) / self.attention_span)

    def _fit(self, seq: Sequence, budget: float) -> int:
        """The most of ``seq``'s pending tokens whose cost fits ``budget``."""
        if budget < 1:
            return 0
        if self.attention_span is None:
            return min(seq.num_pending, int(budget))
        span, start = self.attention_span, seq.kv_len
        # n^2 / (2 span) + n (1 + start/span) = budget
        b = 1.0 + start / span
        n = int(span * (-b + math.sqrt(b * b + 2.0 * budget / span)))
        return max(0, min(seq.num_pending, n))

    def _admit(self, room: int, short_only: bool = False) -> list[Sequence]:
        """Move waiting sequences into the batch, in arrival order, while slots and memory allow.
        Past this step's budget (``room``) only short prompts are still admitted: a long one
        waiting does not hold a short one behind it. Each starts after its prompt's blocks
        already in the prefix cache."""
        admitted: list[Sequence] = []
        stay: list[Sequence] = []
        claimed: set[bytes] = set()  # blocks that sequences admitted just now will compute
        while self.waiting and len(self.running) < self.max_batch:
            seq = self.waiting.popleft()
            # the full blocks it may take from the cache: at least its last token is computed
            # (its logits give the first output token); an embedding pools every token's hidden
            # state, so it computes them all
            reuse = self.blocks.caching and seq.embedding is None
            hashes = seq.hashes_upto((seq.num_tokens - 1) // pa.BLOCK_SIZE) if reuse else []
            hit, in_flight = self.blocks.peek(hashes)
            in_flight = in_flight or (hit < len(hashes) and hashes[hit] in claimed)
            pending = seq.num_tokens - hit * pa.BLOCK_SIZE
            short = pending <= self.short_prompt
            if in_flight or ((room <= 0 or short_only) and not short):
                stay.append(seq)  # its prefix is being computed now, or no room: next step
                continue
            # admit only what the pool can hold now, keeping a block of room per running sequence
            need = pending + pa.BLOCK_SIZE * (len(self.running) + 1)
            if self.running and need > self.cache.free_tokens():
                stay.append(seq)
                break  # memory is short: first come, first served
            self.running.append(seq)
            self._take_cached(seq, hashes)
            claimed.update(hashes[hit:])
            admitted.append(seq)
            room -= min(pending, self.short_prompt)
        self.waiting.extendleft(reversed(stay))
        return admitted

    def _allocate(self, plan: Plan, exclude: Collection[Sequence]) -> Plan:
        """KV blocks for the plan; the youngest sequences are preempted when the pool runs dry."""
        for seq, n in plan:
            while seq in self.running and not seq.table.ensure(self.cache, seq.kv_len + n):
                victims = [s for s in self.running if s not in exclude]
                victim = victims[-1]
                if victim is seq and len(self.running) == 1:  # alone and still too big
                    seq.finish("length" if seq.output_ids else "error",
                               error=None if seq.output_ids else "prompt does not fit in the KV cache",
                               error_code=0 if seq.output_ids else ErrorCode.CONTEXT_OVERFLOW)
                    self.retire(seq)
                    break
                self._preempt(victim)
        return [(s, n) for s, n in plan if s in self.running]

    def _preempt(self, seq: Sequence) -> None:
        """Give ``seq``'s blocks back and recompute it later (its prompt and output so far are
        prefilled again, or found in the prefix cache if still there; the stream just pauses)."""
        self.running.remove(seq)
        seq.table.release(self.cache)
        seq.kv_len = 0
        seq.cache_synced = 0
        if seq.embedding is not None:  # its hidden states are pooled again from the start
            seq.embedding.total = None
        self.waiting.appendleft(seq)
        self.preemptions += 1
        self.metrics.preempt.inc()
        log.info("KV cache full: preempted request %s (%d tokens)", seq.request_id, seq.num_tokens)

    def after_forward(self, plan: Plan) -> None:
        """The plan's tokens are computed: advance each sequence, publish its full blocks."""
        for seq, n in plan:
            seq.kv_len += n
            self._sync_blocks(seq)

    # ---------------------------------------------------------------- prefix cache
    def _take_cached(self, seq: Sequence, hashes: list[bytes]) -> None:
        if not self.blocks.caching:
            return
        found, _ = self.blocks.match(hashes)
        seq.table.append(found)
        seq.kv_len = len(found) * pa.BLOCK_SIZE
        seq.cache_synced = len(found)
        if not seq.output_ids:  # a first admission (not a preempted sequence coming back)
            seq.cached_tokens = seq.kv_len
            self.metrics.on_prefix_lookup(len(seq.prompt_ids), seq.kv_len)

    def _register_in_flight(self, seq: Sequence) -> None:
        """Make the not yet computed full blocks whose tokens are known findable as in flight,
        so a sequence arriving with the same prefix waits for them instead of recomputing."""
        if not self.blocks.caching:
            return
        known = min(seq.num_tokens // pa.BLOCK_SIZE, len(seq.table.blocks))
        if known <= seq.cache_synced:
            return
        hashes = seq.hashes_upto(known)
        for i in range(seq.cache_synced, known):
            self.blocks.register(seq.table.blocks[i], hashes[i], ready=False)

    def _sync_blocks(self, seq: Sequence) -> None:
        if not self.blocks.caching:
            return
        done = min(seq.kv_len, seq.num_tokens) // pa.BLOCK_SIZE
        if done <= seq.cache_synced:
            return
        hashes = seq.hashes_upto(done)
        for i in range(seq.cache_synced, done):
            block = seq.table.blocks[i]
            if self.blocks.is_registered(block):
                self.blocks.mark_ready(block)
            else:
                self.blocks.register(block, hashes[i], ready=True)
        seq.cache_synced = done
