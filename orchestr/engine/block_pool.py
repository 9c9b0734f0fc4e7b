"""KV-cache blocks: who holds them, and (with prefix caching) which content they hold.

A block is ``BLOCK_SIZE`` token slots of every layer's key/value pool. Sequences hold blocks
through their block tables; a block's reference count is the number of tables holding it.

Automatic prefix caching (on by default, as in vLLM): a *full* block is content-addressed by a
hash of its token ids chained with the hash of everything before it, so two sequences whose
first ``k * BLOCK_SIZE`` tokens agree share their first ``k`` blocks, whatever else differs.
The hash is a cryptographic digest (blake2b), not Python's ``hash``: a crafted prompt must not be
able to collide with another user's prefix and read attention state computed from it.

Life of a block: *free* (no content) -> *held* (reference count > 0; registered under its
hash once its tokens are known) -> on release, a registered block whose keys/values are
computed becomes *cached* (reference count 0, still findable) and is only reused for other
content when no free block is left, least recently released first. A registered block that is
not yet computed (a prompt block another sequence is still prefilling) is *in flight*: a new
sequence with that prefix waits for it rather than computing the same tokens twice.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

BLOCK_SIZE = 16
ROOT_HASH = b""  # the "prefix" of a sequence's first block


def block_hash(parent: bytes, tokens: Sequence[int], salt: bytes = b"") -> bytes:
    """The content address of a full block: its token ids, chained with its prefix's hash
    (and ``salt``, for anything besides the tokens that changes keys/values, e.g. an adapter)."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(salt)
    h.update(array("q", tokens).tobytes())
    return h.digest()


def chain_hashes(tokens: Sequence[int], start: int = 0, parent: bytes = ROOT_HASH,
                 salt: bytes = b"") -> list[bytes]:
    """Hashes of the full blocks of ``tokens`` from block ``start`` on, chained from ``parent``
    (the hash of block ``start - 1``)."""
    out = []
    for i in range(start, len(tokens) // BLOCK_SIZE):
        parent = block_hash(parent, tokens[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE], salt)
        out.append(parent)
    return out


class BlockPool:
    """Hands out block ids; keeps reference counts and, when ``caching``, the content index."""

    def __init__(self, num_blocks: int, caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.caching = caching
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() gives the lowest id
        self._cached: OrderedDict[int, None] = OrderedDict()  # ref 0, findable; first = evicted first
        self._refs = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._ready = [False] * num_blocks
        self._by_hash: dict[bytes, int] = {}

    # ---------------------------------------------------------------- capacity
    def free_count(self) -> int:
        """Blocks that can be handed out now (free, or cached and evictable)."""
        return len(self._free) + len(self._cached)

    def used_count(self) -> int:
        """Blocks held by some sequence."""
        return self.num_blocks - self.free_count()

    def cached_count(self) -> int:
        """Blocks whose content is findable (held or not)."""
        return len(self._by_hash)

    # ---------------------------------------------------------------- allocation
    def allocate(self, n: int) -> list[int] | None:
        """``n`` blocks for new content (reference count 1), evicting cached blocks least
        recently released first when no free one is left; None when the pool cannot."""
        if n > self.free_count():
            return None
        out = []
        for _ in range(n):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._cached.popitem(last=False)
                self._forget(block)
            self._refs[block] = 1
            out.append(block)
        return out

    def release(self, blocks: list[int]) -> None:
        """Drop one reference to each block. The tail of a sequence is released first, so of
        one prefix the longest continuations are evicted before the blocks they build on."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] > 0:
                continue
            if self._hash[block] is not None and self._ready[block]:
                self._cached[block] = None  # most recently released: evicted last
            else:
                self._forget(block)
                self._free.append(block)
        blocks.clear()

    def _forget(self, block: int) -> None:
        h = self._hash[block]
        if h is not None and self._by_hash.get(h) == block:
            del self._by_hash[h]
        self._hash[block] = None
        self._ready[block] = False

    # ---------------------------------------------------------------- content index
    def match(self, hashes: list[bytes]) -> tuple[list[int], bool]:
        """The longest run of computed blocks for ``hashes`` (a sequence's full blocks in
        order), each taken with a reference; and whether the next block is in flight (being
        computed by another sequence: worth waiting for)."""
        found: list[int] = []
        in_flight = False
        if self.caching:
            for h in hashes:
                block = self._by_hash.get(h)
                if block is None:
                    break
                if not self._ready[block]:
                    in_flight = True
                    break
                found.append(block)
        for block in found:
            if self._refs[block] == 0:
                del self._cached[block]
            self._refs[block] += 1
        return found, in_flight

    def peek(self, hashes: list[bytes]) -> tuple[int, bool]:
        """What :meth:`match` would find (its length, and whether the next block is in flight),
        taking nothing."""
        if not self.caching:
            return 0, False
        n = 0
        for h in hashes:
            block = self._by_hash.get(h)
            if block is None:
                return n, False
            if not self._ready[block]:
                return n, True
            n += 1
        return n, False

    def register(self, block: int, h: bytes, ready: bool) -> None:
        """Make ``block`` findable under ``h`` (the first block with that content wins; a
        later twin stays private and is freed normally)."""
        if not self.caching or self._hash[block] is not None:
            return
        if h in self._by_hash:
            return
        self._hash[block] = h
        self._ready[block] = ready
        self._by_hash[h] = block

    def mark_ready(self, block: int) -> None:
        self._ready[block] = True

    def is_registered(self, block: int) -> bool:
        return self._hash[block] is not None

    def reset_cache(self) -> int:
        """Forget every cached block that no sequence holds (e.g. after new weights); the
        number forgotten."""
        n = len(self._cached)
        while self._cached:
            block, _ = self._cached.popitem(last=False)
            self._forget(block)
            self._free.append(block)
        return n
