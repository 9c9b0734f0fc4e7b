"""orchestr.interrupts on real signals: an inherited SIG_IGN does not stop SIGINT from stopping a
command, a signal inside a deferred section waits for its safe point, and a second signal while the
first is handled ends the process at once."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from orchestr import interrupts
from tests.conftest import REPO


def test_handled_takes_sigint_even_when_ignored_and_puts_the_old_handlers_back() -> None:
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job
    try:
        with pytest.raises(interrupts.Interrupted) as stopped, interrupts.handled():
            signal.raise_signal(signal.SIGINT)
        assert stopped.value.exit_code == 130
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_deferred_signal_is_raised_at_the_safe_point_and_not_before() -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt) as stopped:  # (the test's own, not the session's)
        with interrupts.handled(), interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)
            reached.append("after the signal")  # still runs: the signal only recorded itself
            assert interrupts.pending() == signal.SIGTERM
            interrupts.check()
            reached.append("after check")
    assert reached == ["after the signal"] and stopped.value.exit_code == 143


def test_a_second_signal_while_the_first_is_handled_ends_the_process_at_once() -> None:
    script = ("import signal, time\nfrom orchestr import interrupts\n"
              "with interrupts.handled():\n"
              "    try:\n        signal.raise_signal(signal.SIGINT)\n"
              "    except KeyboardInterrupt:\n"
              "        print('cleaning up', flush=True)\n"
              "        signal.raise_signal(signal.SIGTERM)  # a second signal during the cleanup\n"
              "        time.sleep(30)\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 143 and proc.stdout == "cleaning up\n", proc
    assert "SIGTERM while stopping: exiting now" in proc.stderr
