"""Which sequences run in the next forward, and how many of their tokens.

Each step packs, under a token budget (``max_num_batched_tokens``):
1. one token for every decoding sequence (a stream never waits for a prefill for long);
2. prefill tokens of sequences still reading their prompt (or their history after a
   preemption). Short prompts go first, whole, so a new short request starts in the next
   step even while a long prompt is being read; the long prompts share what is left in
   arrival order, the oldest always keeping a quarter of the budget so short traffic cannot
   starve it;
3. newly admitted sequences, each starting after the blocks of its prompt that the prefix
   cache already holds (see block_pool). A sequence whose next prompt block another sequence
   is computing right now waits a step rather than computing the same tokens twice.

When the KV pool runs dry the youngest sequence is preempted: its blocks go back (findable in
the prefix cache until evicted) and it is recomputed later.
"""

from __future__ import annotations

import logging
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
    def __init__(self, cache: pa.PagedKVCache, config: EngineConfig, metrics: Any) -> None:
        self.cache = cache
        self.blocks = cache.pool
        self.metrics = metrics
        self.batching = config.batching
        self.max_batch = max(1, config.max_batch_size) if self.batching else 1
        self.token_budget = max(1, config.max_num_batched_tokens)
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
        in ``exclude`` (a paused forward's) are neither scheduled nor preempted."""
        budget = self.token_budget if self.batching else 1 << 30
        decodes = [s for s in self.running if s.is_decoding and s not in exclude]
        plan: Plan = [(s, 1) for s in decodes]
        budget -= len(decodes)
        prefilling = [s for s in self.running if not s.is_decoding and s not in exclude]
        if budget > 0:  # long prompts in progress do not hold new requests back (see _share)
            prefilling += self._admit(budget - sum(s.num_pending for s in prefilling
                                                   if s.num_pending <= self.short_prompt))
        plan += self._share(prefilling, budget)
        plan = self._allocate(plan, exclude)
        for seq, _ in plan:  # prompt blocks about to be computed: findable as in flight
            self._register_in_flight(seq)
        return plan

    def _share(self, prefilling: list[Sequence], budget: int) -> Plan:
        """Prefill tokens for this step: short prompts whole and first, then the long ones in
        arrival order (the oldest long one keeps a quarter of the budget)."""
        if budget <= 0 or not prefilling:
            return []
        short = [s for s in prefilling if s.num_pending <= self.short_prompt]
        long = [s for s in prefilling if s.num_pending > self.short_prompt]
        reserved = min(self.token_budget // 4, long[0].num_pending, budget) if long and short else 0
        plan: Plan = []
        left = budget - reserved
        for seq in short:
            if left < seq.num_pending:
                break
            plan.append((seq, seq.num_pending))
            left -= seq.num_pending
        left += reserved
        for seq in long:
            if left <= 0:
                break
            n = min(seq.num_pending, left)
            plan.append((seq, n))
            left -= n
        return plan

    def _admit(self, room: int) -> list[Sequence]:
        """Move waiting sequences into the batch while slots, memory and (roughly) this step's
        budget allow; each starts after its prompt's blocks already in the prefix cache."""
        admitted: list[Sequence] = []
        deferred: list[Sequence] = []
        while self.waiting and len(self.running) < self.max_batch and room > 0:
            seq = self.waiting[0]
            # the full blocks it may take from the cache: at least its last token is computed
            # (its logits give the first output token)
            hashes = seq.hashes_upto((seq.num_tokens - 1) // pa.BLOCK_SIZE) if self.blocks.caching else []
            hit, in_flight = self.blocks.peek(hashes)
            if in_flight:  # another sequence is computing this prefix now: wait for it
                deferred.append(self.waiting.popleft())
                continue
            # admit only what the pool can hold now, keeping a block of room per running sequence
            need = seq.num_tokens - hit * pa.BLOCK_SIZE + pa.BLOCK_SIZE * (len(self.running) + 1)
            if self.running and need > self.cache.free_tokens():
                break
            self.waiting.popleft()
            self.running.append(seq)
            self._take_cached(seq, hashes)
            admitted.append(seq)
            room -= seq.num_pending
        self.waiting.extendleft(reversed(deferred))
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
