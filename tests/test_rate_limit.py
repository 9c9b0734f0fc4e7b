"""The API server's budgets and client-facing messages, as pure functions (the served behaviour is
tested end to end in test_fair_bounded.py)."""

from __future__ import annotations

from orchestr.services.api_errors import client_message
from orchestr.services.rate_limit import AuthThrottle, RateLimits, WindowCounter, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_counter_refuses_past_the_limit_until_the_window_ends():
    clock = Clock()
    c = WindowCounter(3, 60, clock)
    for _ in range(3):
        assert not c.exhausted("a")
        c.add("a")
    assert c.exhausted("a") and not c.exhausted("b")
    clock.now += 59.2
    assert c.retry_after("a") == 1
    clock.now += 1
    assert not c.exhausted("a")  # a fresh window


def test_rate_limits_count_requests_and_tokens_per_key():
    limits = RateLimits(requests=2, tokens=100, window_s=60)
    assert limits.admit("k") is None and limits.admit("k") is None
    which, wait = limits.admit("k")
    assert which == "requests" and 0 < wait <= 60
    limits.charge_tokens("t", 150)
    assert limits.admit("t")[0] == "tokens"
    assert not RateLimits(0, 0, 60).enabled


def test_failed_authentications_wait_longer_then_lock_out():
    throttle = AuthThrottle(free=2, lockout=6, window_s=300, max_delay_s=5)
    delays = [throttle.failed("10.0.0.1") for _ in range(5)]
    assert delays == [0.0, 0.0, 0.1, 0.2, 0.4]
    assert throttle.locked_out("10.0.0.1") is None
    throttle.failed("10.0.0.1")
    assert throttle.locked_out("10.0.0.1") > 0 and throttle.locked_out("10.0.0.2") is None


def test_client_keys_never_hold_the_api_key_in_clear():
    assert "sk-secret" not in client_key("sk-secret", "1.2.3.4")
    assert client_key(None, "1.2.3.4") == "addr:1.2.3.4"


def test_client_messages_carry_no_build_path_or_exception_name():
    xgrammar = ("cannot use this JSON schema for constrained decoding: [01:43:34] "
                "/project/cpp/json_schema_converter.cc:3562: Invalid range: minimum greater than maximum\n")
    assert client_message(xgrammar) == ("cannot use this JSON schema for constrained decoding: Invalid range: "
                                        "minimum greater than maximum")
    assert client_message("worker request failed: ConnectError('All connection attempts failed')") == \
        "worker request failed: All connection attempts failed"
    assert client_message("the worker stream broke: RuntimeError: boom") == "the worker stream broke: boom"
    assert client_message("Invalid URL (GET /v1/nothing-here)") == "Invalid URL (GET /v1/nothing-here)"
