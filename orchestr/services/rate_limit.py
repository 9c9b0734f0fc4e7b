"""Per-client budgets of the API server: request and token rate limits (off by default) and the
slow-down of failed authentications, each counted per key (an API key, else a client address)
in fixed windows that start with a key's first use."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

MAX_TRACKED = 100_000  # keys remembered at once; expired windows are dropped first


@dataclass
class _Window:
    start: float
    used: int = 0


class WindowCounter:
    """At most ``limit`` units per ``window_s`` seconds and key (``limit`` 0: unlimited)."""

    def __init__(self, limit: int, window_s: float, clock=time.monotonic):
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._windows: dict[str, _Window] = {}

    def _window(self, key: str) -> _Window:
        now = self.clock()
        w = self._windows.get(key)
        if w is None or now - w.start >= self.window_s:
            if len(self._windows) >= MAX_TRACKED:
                self._prune(now)
            w = self._windows[key] = _Window(now)
        return w

    def _prune(self, now: float) -> None:
        for k in [k for k, w in self._windows.items() if now - w.start >= self.window_s]:
            del self._windows[k]
        while len(self._windows) >= MAX_TRACKED:  # all live: forget the oldest
            del self._windows[next(iter(self._windows))]

    def used(self, key: str) -> int:
        return self._window(key).used if self.limit else 0

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key``'s window ends (at least 1)."""
        w = self._window(key)
        return max(1, math.ceil(w.start + self.window_s - self.clock()))

    def exhausted(self, key: str) -> bool:
        return bool(self.limit) and self._window(key).used >= self.limit

    def add(self, key: str, units: int = 1) -> None:
        if self.limit:
            self._window(key).used += units


class RateLimits:
    """``requests`` and ``tokens`` per ``window_s`` and client; 0 turns either off."""

    def __init__(self, requests: int, tokens: int, window_s: float):
        self.requests = WindowCounter(requests, window_s)
        self.tokens = WindowCounter(tokens, window_s)

    @property
    def enabled(self) -> bool:
        return bool(self.requests.limit or self.tokens.limit)

    def admit(self, key: str) -> tuple[str, int] | None:
        """Count one request of ``key``; (which limit, Retry-After seconds) when it is over one."""
        if self.requests.exhausted(key):
            return "requests", self.requests.retry_after(key)
        if self.tokens.exhausted(key):
            return "tokens", self.tokens.retry_after(key)
        self.requests.add(key)
        return None

    def charge_tokens(self, key: str, tokens: int) -> None:
        self.tokens.add(key, tokens)


class AuthThrottle:
    """Failed authentications per client address: after ``free`` failures in ``window_s`` each
    further failure is answered only after a delay that doubles (up to ``max_delay_s``); after
    ``lockout`` failures (0: never) the address gets 429 until its window ends."""

    def __init__(self, free: int = 5, lockout: int = 50, window_s: float = 300.0, max_delay_s: float = 5.0):
        self.failures = WindowCounter(max(lockout, 1), window_s)
        self.free, self.lockout, self.max_delay_s = free, lockout, max_delay_s

    def locked_out(self, address: str) -> int | None:
        """Retry-After seconds when ``address`` is locked out, else None."""
        if self.lockout and self.failures.used(address) >= self.lockout:
            return self.failures.retry_after(address)
        return None

    def failed(self, address: str) -> float:
        """Record a failure; the seconds to wait before answering it."""
        self.failures.add(address)
        over = self.failures.used(address) - self.free
        return 0.0 if over <= 0 else min(self.max_delay_s, 0.1 * 2 ** (over - 1))


def client_key(api_key: str | None, address: str | None) -> str:
    """Whom a budget belongs to: the API key (hashed, never kept in memory in clear), else the address."""
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:32]
    return "addr:" + (address or "unknown")
