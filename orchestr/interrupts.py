"""Ctrl-C and SIGTERM for the long-running commands (`orchestr eval`, `bench serve`, `train`).

`handled()` (around a command's run) makes SIGINT and SIGTERM raise `Interrupted`, a
KeyboardInterrupt, in the main thread, whatever the process inherited: a shell that starts a
background job without job control gives it SIGINT *ignored* (Python then never raises
KeyboardInterrupt), and SIGTERM's default ends the process without the run's resume message.

Work that must not be cut in the middle (saving a finished result, a progress-bar update, a held
lock, a training step) runs under `deferred()`: there a signal is only recorded, and the code asks
`pending()` where stopping is safe. A second signal while the first is being handled ends the
process at once (exit 128 + signal); what finished before is on disk already.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked the run to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


_pending: int | None = None  # the signal received and not yet turned into Interrupted
_handling = False  # inside handled()
_stopping = False  # an Interrupted is unwinding (or being handled): a second signal ends the process
_depth = 0  # nested deferred() sections


def _on_signal(signum: int, _frame: object) -> None:
    global _pending, _stopping
    if _stopping or _pending is not None:
        # os.write, not print: the main thread may be inside a write to stderr right now.
        os.write(2, f"\n{signal.Signals(signum).name} while stopping: exiting now\n".encode())
        os._exit(128 + signum)
    if _depth:
        _pending = signum  # deferred: the running code stops at its next safe point
        return
    _stopping = _handling
    raise Interrupted(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread until the block ends (then the
    previous handlers are back). Elsewhere than the main thread: nothing changes."""
    global _pending, _stopping, _handling
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    _pending, _stopping, _handling = None, False, True
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _pending, _stopping, _handling = None, False, False


@contextmanager
def deferred() -> Iterator[None]:
    """Inside, a signal only records itself (`pending()`); the block stops where that is safe by
    calling `check()`. A signal still pending when the block ends is raised then. Outside
    `handled()`, SIGINT and SIGTERM are caught here too (unless the process ignores them)."""
    global _depth, _pending, _stopping
    if not _in_main_thread():
        yield
        return
    previous = {}
    if _depth == 0:
        for s in SIGNALS:
            if signal.getsignal(s) not in (_on_signal, signal.SIG_IGN):
                previous[s] = signal.signal(s, _on_signal)
    _depth += 1
    try:
        yield
    except BaseException:
        if _depth == 1 and _pending is not None:  # going down anyway: the signal has had its effect
            _pending, _stopping = None, _handling
        raise
    finally:
        _depth -= 1
        if _depth == 0:
            for s, h in previous.items():
                signal.signal(s, h)
    if _depth == 0:
        check()


def pending() -> int | None:
    """The signal received inside deferred() and not yet raised, if any."""
    return _pending


def check() -> None:
    """Raise Interrupted for a pending signal."""
    global _pending, _stopping
    if _pending is not None:
        signum, _pending = _pending, None
        _stopping = _handling
        raise Interrupted(signum)


def forget() -> None:
    """The caller has passed the signal on (e.g. to a child process) and waits on: a further signal
    is a first one again."""
    global _pending, _stopping
    _pending, _stopping = None, False
