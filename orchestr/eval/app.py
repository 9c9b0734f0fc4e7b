"""`orchestr eval`: the answer, judge and results steps as one Hydra app.

    orchestr eval                                       # embedded bench, all steps, judge = self
    orchestr eval bench=mt_bench eval.step=answer       # one step
    orchestr eval eval.step=judge judge.mode=pairwise-all
    orchestr eval -m model=a,b judge.mode=single,pairwise-all   # a sweep (Hydra multirun)

Each step reads and writes FastChat's layout under eval.data_dir, so steps, reruns and sweep jobs
pick up each other's files (and resume where a killed run stopped).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from orchestr import interrupts
from orchestr.config import CONF_DIR, check_composes, register_configs
from orchestr.eval.errors import EvalError

STEPS = ("all", "answer", "judge", "results", "agreement")


class IncompleteRun(Exception):
    """A step finished with failed (or not attempted) items: exit non-zero after the report."""


def run(cfg: Any) -> None:
    step = cfg.eval.step
    if step not in STEPS:
        raise EvalError(f"eval.step must be one of {', '.join(STEPS)}, not {step!r}")
    incomplete = []
    if cfg.eval.quarantine_corrupt:
        _quarantine(cfg)
    if step in ("all", "answer"):
        from orchestr.eval.answers import run_answers

        if run_answers(cfg).failed:
            incomplete.append("answer")
    if step in ("all", "judge"):
        from orchestr.eval.judge import run_judge

        if run_judge(cfg).incomplete:
            incomplete.append("judge")
    if step in ("all", "results"):
        from orchestr.eval.judge import judgment_path
        from orchestr.eval.records import read_jsonl
        from orchestr.eval.results import run_results

        if step == "results" or read_jsonl(judgment_path(cfg)):
            run_results(cfg)
    if step == "agreement":
        from orchestr.eval.agreement import run_agreement

        run_agreement(cfg)
    if incomplete:
        raise IncompleteRun(f"the {' and '.join(incomplete)} step(s) did not finish every item (see above)")


def _quarantine(cfg: Any) -> None:
    from orchestr.eval import paths
    from orchestr.eval.judge import judgment_path
    from orchestr.eval.records import quarantine_corrupt

    files = [judgment_path(cfg), *sorted(paths.answer_dir(cfg.eval.data_dir, cfg.bench.name).glob("*.jsonl"))]
    for f in files:
        if n := quarantine_corrupt(f):
            print(f"moved {n} corrupt line(s) of {f} to {f.name}.corrupt")


def run_or_exit(cfg: Any) -> None:
    """User mistakes end with a message and exit status 2, not a stack trace."""
    # Hydra sets the root logger to INFO; one line per HTTP request would bury the progress bar.
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("openai").setLevel(logging.INFO)  # the SDK's "Retrying request to ..." lines
    from orchestr.eval.records import CorruptLines

    try:
        with interrupts.handled():  # SIGTERM, and SIGINT even where the shell ignored it, stop the run
            run(cfg)
    except EvalError as e:
        print(f"orchestr eval: {e}", file=sys.stderr)
        sys.exit(2)
    except CorruptLines as e:
        print(f"orchestr eval: {e}\n  FastChat's tools cannot read such a file either: fix or remove those lines, or "
              "rerun with eval.quarantine_corrupt=true to move them to <file>.corrupt", file=sys.stderr)
        sys.exit(2)
    except IncompleteRun as e:
        print(f"orchestr eval: {e}; rerun the same command to resume", file=sys.stderr)
        sys.exit(1)
    except MissingMandatoryValue as e:
        print(f"orchestr eval: {e.full_key} must be set (`{e.full_key}=...` on the command line)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        from orchestr.config.redact import rerun_line

        why = f" ({e.args[0]})" if isinstance(e, interrupts.Interrupted) else ""
        print(f"orchestr eval: interrupted{why}; every finished answer and judgment is saved under "
              f"{cfg.eval.data_dir}\n  to resume (only what is missing is run), rerun: {rerun_line(sys.argv)}",
              file=sys.stderr)
        # Every finished record is fsynced already. Requests or an in-process generation may still run
        # on worker threads (native code): exit now rather than wait for them or tear them down mid-call.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(e.exit_code if isinstance(e, interrupts.Interrupted) else 130)


register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    run_or_exit(cfg)


def main() -> int:
    check_composes(sys.argv[1:])  # a bad override: one line naming the key, exit 2
    _hydra_main()
    return 0


if __name__ == "__main__":
    main()
