"""Run one function over many items on a thread pool with a progress bar; Ctrl-C stops promptly."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


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
    Exceptions outside `errors` (a user mistake, a bug) stop the run after cancelling what has not started."""
    items = list(items)
    pool = ThreadPoolExecutor(max(1, parallel))
    try:
        futures = {pool.submit(fn, item): item for item in items}
        for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, file=sys.stderr):
            item = futures[fut]
            try:
                result = fut.result()
            except errors as e:
                on_error(item, e)
                continue
            on_result(item, result)
    except BaseException:
        # Ctrl-C or a fatal error: do not start queued work; finished results are already saved.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
