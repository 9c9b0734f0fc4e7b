"""Run one function over many items on worker threads with a progress bar; Ctrl-C stops at once.

The workers are daemon threads, so an interrupted run does not wait for requests (or an in-process
generation) that are still going, whatever they are doing (connecting, reading a hung response,
sleeping before a retry): the process exits within seconds. The calling thread never blocks for
long and takes SIGINT/SIGTERM only between results (orchestr.interrupts.deferred), so a signal never
lands in the middle of saving a result or of a progress-bar update; every result that finished
before the interrupt is handed to `on_result` (and so saved) before `Interrupted` propagates.
A `StopRun` raised by the function (e.g. the judge's budget is spent) stops starting new items,
lets the running ones finish and keeps their results, then propagates.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from tqdm import tqdm

from orchestr import interrupts

T = TypeVar("T")
R = TypeVar("R")


class StopRun(Exception):
    """Stop starting new work (the run ends cleanly, keeping what finished)."""


def run_parallel(
    items: Iterable[T],
    fn: Callable[[T], R],
    parallel: int,
    desc: str,
    on_result: Callable[[T, R], None],
    on_error: Callable[[T, Exception], None],
    errors: tuple[type[Exception], ...],
) -> None:
    """on_result/on_error run in the calling thread, one at a time (so file appends need no ordering care).
    Exceptions outside `errors` (a user mistake, a bug) stop the run; so does StopRun, after the running
    items finish."""
    todo: queue.Queue = queue.Queue()
    items = list(items)
    for item in items:
        todo.put(item)
    done: queue.Queue = queue.Queue()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((item, True, fn(item)))
            except BaseException as e:  # handed to the calling thread
                done.put((item, False, e))

    threads = [threading.Thread(target=worker, daemon=True, name=f"{desc}-{i}")
               for i in range(max(1, min(parallel, len(items))))]  # fmt: skip
    fatal: BaseException | None = None

    def handle(item: T, ok: bool, value) -> None:
        nonlocal fatal
        bar.update(1)
        if ok:
            on_result(item, value)
        elif isinstance(value, errors):
            on_error(item, value)
        elif fatal is None:
            fatal = value
            stop.set()

    def keep_finished() -> None:
        stop.set()
        while True:
            try:
                handle(*done.get_nowait())
            except queue.Empty:
                return

    with interrupts.deferred():
        bar = tqdm(total=len(items), desc=desc, file=sys.stderr)
        for t in threads:
            t.start()
        try:
            handled = 0
            while handled < len(items):
                if interrupts.pending() is not None:
                    keep_finished()
                    interrupts.check()
                try:
                    item, ok, value = done.get(timeout=0.1)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and done.empty():
                        break  # stopped early: the rest were never started
                    continue
                handled += 1
                handle(item, ok, value)
        finally:
            stop.set()  # an exception (a bug, a failing on_result): start nothing more
            bar.close()
    if fatal is not None:
        raise fatal
