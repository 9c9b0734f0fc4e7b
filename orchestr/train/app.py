"""`orchestr train`: fine-tune the selected model from the `train` config, as a Hydra app.

    orchestr train train=lora train.data=conversations.json train.max_steps=30 train.output_dir=out
    orchestr train train=dpo train.data=~/.local/share/orchestr/logs train.max_steps=20 train.output_dir=out
    orchestr train cluster=multi_node launch.dry_run=true      # per-node torchrun command lines

One node without GPUs (or with one): trains in this process. Several nodes or GPUs: prints (with
`launch.dry_run=true`) or runs the `torchrun` / `accelerate launch` lines of
orchestr.train.dist; the processes they start run this same entry point and train.
"""

from __future__ import annotations

import os
import subprocess
import sys

import hydra
from omegaconf import DictConfig

from orchestr import interrupts
from orchestr.config import CONF_DIR, check_composes, register_configs

_exit_codes: list[int] = []


def _say(msg: str) -> None:
    print(f"orchestr train: {msg}", file=sys.stderr, flush=True)


def run(cfg: DictConfig, overrides: list[str]) -> int:
    from orchestr.train.data import DataError
    from orchestr.train.dist import (
        DistError,
        in_distributed_process,
        is_multi_process,
        render_commands,
        render_text,
    )

    try:
        if not in_distributed_process() and is_multi_process(cfg.cluster, cfg.train.distributed):
            commands = render_commands(cfg.cluster, cfg.train.distributed, overrides)
            print(render_text(commands, cfg.train.distributed), flush=True)
            if cfg.launch.dry_run:
                return 0
            local = [c for c in commands if cfg.cluster.nodes[c.node].transport == "local"]
            if len(commands) > 1 or not local:
                _say("several nodes: run each node's line above on that node (or use launch.dry_run=true)")
                return 2
            return _run_forwarding_signals(local[0].line())
        if cfg.launch.dry_run:
            import shlex

            from orchestr.train.dist import local_overrides

            argv = [sys.executable, "-m", "orchestr.train.app", *local_overrides(overrides)]
            print(f"# one process on this machine\n{shlex.join(argv)}")
            return 0
        from orchestr.engine.loader import ModelLoadError
        from orchestr.train.recipes import run as run_training

        try:
            run_training(cfg)
        except ModelLoadError as e:
            _say(f"error: model.path: {e}")
            return 2
    except (DataError, DistError, FileNotFoundError) as e:
        _say(f"error: {e}")
        return 2
    return 0


def _run_forwarding_signals(line: str) -> int:
    """The local launcher (torchrun, accelerate): a signal to this process goes on to it, and its
    ranks checkpoint and stop as one process does; then this process exits with its status."""
    proc = subprocess.Popen(line, shell=True)
    while True:
        try:
            return proc.wait()
        except interrupts.Interrupted as e:
            proc.send_signal(e.signum)
            interrupts.forget()


def _interrupted(e: KeyboardInterrupt, output_dir: str) -> int:
    from orchestr.config.redact import rerun_line

    why = f" ({e.args[0]})" if isinstance(e, interrupts.Interrupted) else ""
    checkpoint = getattr(e, "checkpoint", None)
    if checkpoint is None:  # stopped before training (loading, evaluating the base): an earlier run's?
        from orchestr.train.recipes import last_checkpoint

        checkpoint = last_checkpoint(output_dir)
    if checkpoint:
        _say(f"interrupted{why}; the last checkpoint is {checkpoint}\n"
             f"  to resume from it (train.resume=auto), rerun: {rerun_line(sys.argv)}")
    else:
        _say(f"interrupted{why} before the first checkpoint\n  to start again, rerun: {rerun_line(sys.argv)}")
    return e.exit_code if isinstance(e, interrupts.Interrupted) else 130


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task)
    try:
        with interrupts.handled():  # SIGTERM, and SIGINT even where the shell ignored it
            _exit_codes.append(run(cfg, overrides))
    except KeyboardInterrupt as e:
        _exit_codes.append(_interrupted(e, cfg.train.output_dir))


def main() -> int:
    register_configs()
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    check_composes(sys.argv[1:])  # a bad override: one line naming the key, exit 2
    _hydra_main()
    return max(_exit_codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
