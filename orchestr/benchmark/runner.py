"""Run one concurrency level against one endpoint: N client tasks share a fixed list of requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from orchestr.benchmark.client import RequestRecord, RequestSpec, stream_request
from orchestr.benchmark.prompts import prompt_messages
from orchestr.benchmark.stats import LevelResult, summarise
from orchestr.services.stream_client import StreamClient


class RssSampler:
    """Peak resident memory of each labelled process tree (process + children), sampled in a thread.

    Shared pages are counted once per process, so a tree's figure is an upper bound.
    """

    def __init__(self, pids: dict[str, int], interval_s: float = 0.5) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak_mb: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _tree_rss(self, pid: int) -> float:
        import psutil

        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def _sample(self) -> None:
        for label, pid in self.pids.items():
            mb = self._tree_rss(pid)
            if mb > self.peak_mb.get(label, 0.0):
                self.peak_mb[label] = round(mb, 1)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        if self.pids:
            self._sample()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.pids:
            self._stop.set()
            self._thread.join()
            self._sample()


async def _run_requests(make_spec: Callable[[int], RequestSpec], concurrency: int, num_requests: int,
                        timeout_s: float, on_done: Callable[[RequestRecord], None],
                        arrivals: list[float] | None = None) -> tuple[list[RequestRecord], float]:
    """``concurrency`` client tasks work through the requests in order; with ``arrivals`` (seconds
    from the start, one per request) a request is not sent before its arrival time."""
    indices = iter(range(num_requests))
    records: list[RequestRecord] = []
    client = StreamClient(connect_timeout=30.0, read_timeout=timeout_s, max_idle_per_host=concurrency + 4)
    try:

        async def client_task() -> None:
            for i in indices:  # the shared iterator hands each index to exactly one task
                if arrivals is not None:
                    wait = t0 + arrivals[i] - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                rec = await stream_request(client, make_spec(i), i)
                records.append(rec)
                on_done(rec)

        t0 = time.perf_counter()
        await asyncio.gather(*(client_task() for _ in range(concurrency)))
        duration = time.perf_counter() - t0
    finally:
        await client.aclose()
    return records, duration


def run_level(
    *,
    protocol: str,
    base_url: str,
    model: str,
    concurrency: int,
    num_requests: int,
    max_tokens: int,
    count_tokens: Callable[[str], int],
    api_key: str | None = None,
    timeout_s: float = 600.0,
    rss_pids: dict[str, int] | None = None,
    progress: bool = True,
    label: str = "",
) -> LevelResult:
    """Run ``num_requests`` streaming requests with ``concurrency`` clients; tokens are counted
    after the run by re-tokenising each answer, the same way for every server."""
    specs = [RequestSpec(protocol=protocol, base_url=base_url, model=model, messages=prompt_messages(i),
                         max_tokens=max_tokens, api_key=api_key) for i in range(num_requests)]
    result, _ = run_specs(specs, concurrency=concurrency, count_tokens=count_tokens, timeout_s=timeout_s,
                          rss_pids=rss_pids, progress=progress, label=label)
    return result


def run_specs(specs: list[RequestSpec], *, concurrency: int, count_tokens: Callable[[str], int],
              timeout_s: float = 600.0, rss_pids: dict[str, int] | None = None, progress: bool = True,
              label: str = "", arrivals: list[float] | None = None) -> tuple[LevelResult, list[RequestRecord]]:
    """One level over a given list of requests (``arrivals``: an open-loop schedule, see
    ``_run_requests``); the level's figures and its records, answers re-counted."""
    num_requests = len(specs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_requests, desc=f"{label} c={concurrency}", unit="req", leave=False, dynamic_ncols=True)

    def on_done(_rec: RequestRecord) -> None:
        if bar is not None:
            bar.update(1)

    load_before = _loadavg()
    try:
        with RssSampler(rss_pids or {}) as rss:
            records, duration = asyncio.run(
                _run_requests(specs.__getitem__, concurrency, num_requests, timeout_s, on_done, arrivals))
    finally:
        if bar is not None:
            bar.close()
    for rec in records:
        rec.output_tokens = count_tokens(rec.text) if rec.ok else 0
    result = summarise(concurrency, records, duration)
    result.peak_rss_mb = dict(rss.peak_mb)
    # Other work on the machine skews figures: keep the 1-minute load average with them.
    result.loadavg = [load_before, _loadavg()]
    return result, records


def _loadavg() -> float | None:
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def warm_up(*, protocol: str, base_url: str, model: str, count: int, api_key: str | None,
            timeout_s: float) -> None:
    """A few short requests (not measured): first-request compilation and caches are not load."""
    if count <= 0:
        return

    def make_spec(i: int) -> RequestSpec:
        return RequestSpec(protocol=protocol, base_url=base_url, model=model, messages=prompt_messages(i),
                           max_tokens=16, api_key=api_key)

    records, _ = asyncio.run(_run_requests(make_spec, 1, count, timeout_s, lambda _r: None))
    bad = [r.error for r in records if not r.ok]
    if bad:
        raise RuntimeError(f"warm-up request to {base_url} failed: {bad[0]}")
