"""`orchestr clean`: arena battles, ratings and conversation-release steps, as a Hydra app.

    orchestr clean                                  # step=leaderboard: battles -> ratings
    orchestr clean step=release                     # chats -> moderation -> pii -> ... -> sample
    orchestr clean step=pii pii.input=a.json pii.output=b.json
    orchestr clean -m step=battles,ratings          # a Hydra multirun sweep
    orchestr clean clean=conv_release               # a preset from conf/clean/

Keys of the `clean` section may be written without their `clean.` prefix.
"""

from __future__ import annotations

import sys
from dataclasses import fields

import hydra
from omegaconf import DictConfig

from orchestr.config import CONF_DIR, OrchestrConfig, check_composes, register_configs
from orchestr.config.clean import CleanConfig

_ROOT_KEYS = {f.name for f in fields(OrchestrConfig)}
SHORT_KEYS = {f.name for f in fields(CleanConfig)} - _ROOT_KEYS


def expand_shorthand(args: list[str]) -> list[str]:
    """`step=x` -> `clean.step=x` (also with +, ++ and ~ prefixes); everything else unchanged."""
    out = []
    for arg in args:
        prefix = ""
        body = arg
        for p in ("++", "+", "~"):
            if body.startswith(p):
                prefix, body = p, body[len(p) :]
                break
        key = body.split("=", 1)[0]
        head = key.split(".", 1)[0].split("[", 1)[0]
        if not arg.startswith("-") and ("=" in body or prefix == "~") and head in SHORT_KEYS:
            arg = f"{prefix}clean.{body}"
        out.append(arg)
    return out


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    from orchestr.arena.steps import run_steps

    clean = cfg.clean
    try:
        print(f"orchestr clean: step={clean.step}", flush=True)
        run_steps(clean)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # A user's mistake (bad key value, missing file, unreachable endpoint): say it, no traceback.
        print(f"orchestr clean: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> int:
    register_configs()
    sys.argv = [sys.argv[0], *expand_shorthand(sys.argv[1:])]
    check_composes(sys.argv[1:])  # a bad override: one line naming the key, exit 2
    _run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
