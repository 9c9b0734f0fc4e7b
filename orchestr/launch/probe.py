"""Is each process of a deployment running? Asked of every node at once, with a deadline.

A node that has not answered by the deadline is *unreachable* for this pass (not dead: its
processes may well be serving); its check keeps going in the background and no second one is
queued behind it, so one host cut off never delays what the others report.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from enum import StrEnum

from orchestr.launch.backends import Runners
from orchestr.launch.spec import ProcessRecord


class Liveness(StrEnum):
    running = "running"
    dead = "dead"
    unreachable = "unreachable"


class Probe:
    def __init__(self, runners: Runners, deadline_s: float = 5.0) -> None:
        self.runners = runners
        self.deadline_s = deadline_s
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(runners.nodes)), thread_name_prefix="probe")
        self._pending: dict[str, Future] = {}  # node -> its check still under way
        self.errors: dict[str, str] = {}  # node -> why it did not answer (last pass)

    def _check_node(self, node: str, records: list[ProcessRecord]) -> dict[str, bool]:
        runner = self.runners[node]
        return {r.name: runner.alive(r) for r in records}

    def check(self, records: list[ProcessRecord]) -> dict[str, Liveness]:
        by_node: dict[str, list[ProcessRecord]] = {}
        for r in records:
            by_node.setdefault(r.node, []).append(r)
        for node, recs in by_node.items():
            if node not in self._pending:
                self._pending[node] = self._pool.submit(self._check_node, node, recs)
        wait([self._pending[n] for n in by_node], timeout=self.deadline_s)
        out: dict[str, Liveness] = {}
        self.errors = {}
        for node, recs in by_node.items():
            fut = self._pending[node]
            answers: dict[str, bool] = {}
            if not fut.done():
                self.errors[node] = f"no answer within {self.deadline_s:.0f}s"
            else:
                del self._pending[node]
                try:
                    answers = fut.result()
                except Exception as e:  # a node that cannot be reached or refuses us
                    self.errors[node] = str(e) or type(e).__name__
            for r in recs:
                if r.name not in answers:
                    out[r.name] = Liveness.unreachable
                else:
                    out[r.name] = Liveness.running if answers[r.name] else Liveness.dead
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
