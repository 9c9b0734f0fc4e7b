"""Watches a detached deployment and applies the restart policies (`python -m orchestr.launch.supervisor`)."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from pathlib import Path

from orchestr.launch import state as state_mod
from orchestr.launch.deploy import deployment_from_state


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--state-file", required=True)
    p.add_argument("--interval", type=float, default=2.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(message)s")
    path = Path(args.state_file)
    running = True

    def _stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    state = state_mod.load(path)
    if state is None:
        return 0
    dep = deployment_from_state(state, path)  # keeps one runner (SSH connection) per node
    dep.owner = state.owner or "-"  # (a record written before owners were kept)
    # `orchestr stop` marks the record (then removes it); another launch may take it over
    while running and (reason := dep.left()) is None:
        dep.watch_once(on_event=logging.info)
        time.sleep(args.interval)
    if running:
        logging.info("leaving: %s", reason)
    dep.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
