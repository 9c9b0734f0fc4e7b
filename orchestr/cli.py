"""The `orchestr` command: a thin dispatcher to each subcommand's own entry point.

Hydra-driven subcommands (launch, eval, clean) take Hydra overrides and flags
(`orchestr launch model=x --cfg job`, `orchestr eval -m judge.mode=single,pairwise-all`);
the others take plain argparse flags. Each entry point is imported only when used, so
`orchestr status` never pays for torch.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import nullcontext

from orchestr.errors import OrchestrError

# subcommand -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "launch": ("orchestr.launch.app", "main", "start the deployment the config describes"),
    "render": ("orchestr.launch.render", "main", "render the deployment for another system (`render k8s`)"),
    "status": ("orchestr.launch.day2", "status_main", "show the processes of the running deployment"),
    "logs": ("orchestr.launch.day2", "logs_main", "print (or --follow) one service's log"),
    "stop": ("orchestr.launch.day2", "stop_main", "stop every process of the running deployment"),
    "votes": ("orchestr.launch.day2", "votes_main", "gather every web UI's vote logs (all nodes) into one folder"),
    "chat": ("orchestr.chat", "main", "chat with a model in the terminal"),
    "test-message": ("orchestr.services.test_message", "main", "one round-trip through controller and worker"),
    "eval": ("orchestr.eval.app", "main", "MT-bench style answers, judgments and results"),
    "eval-data": ("orchestr.eval.download", "main", "download pre-generated answers/judgments"),
    "qa-browser": ("orchestr.eval.qa_browser", "main", "browse questions, answers and judgments"),
    "clean": ("orchestr.arena.app", "main", "arena battles, ratings and conversation-release steps"),
    "bench": ("orchestr.benchmark.cli", "main", "serving benchmarks (`orchestr bench serve`)"),
    "train": ("orchestr.train.app", "main", "fine-tune a model: SFT, LoRA or DPO from arena votes"),
}


HYDRA_COMMANDS = frozenset({"launch", "eval", "clean", "train"})  # they take Hydra overrides and flags
# commands that default to the running deployment's settings (orchestr.launch.context)
DEPLOYMENT_COMMANDS = frozenset({"eval", "clean", "train", "chat", "test-message"})


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: orchestr COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`orchestr COMMAND --help` for a command's own options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        from orchestr import __version__

        print(f"orchestr {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"orchestr: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    if name in DEPLOYMENT_COMMANDS:  # they start from the recorded deployment's settings
        from orchestr.launch import context

        if name == "clean":  # `step=x` -> `clean.step=x` first, so keys compare as written in full
            from orchestr.arena.app import expand_shorthand

            rest = expand_shorthand(rest)
        try:
            rest = context.apply(name, rest)
        except OrchestrError as e:
            print(f"orchestr {name}: {e}", file=sys.stderr)
            return e.exit_code
    module = importlib.import_module(module_name)
    # Hydra and argparse both read sys.argv: present the subcommand as the program.
    sys.argv = [f"orchestr {name}", *rest]
    guard = nullcontext()
    if name in HYDRA_COMMANDS:  # Hydra prints the config (--cfg, --info, --help) before our code runs
        from orchestr.config.redact import scrubbed_prints

        guard = scrubbed_prints(rest)
    with guard:
        try:
            result = getattr(module, func_name)()
        except OrchestrError as e:
            # a user mistake (exit 2) or a failure doing the work (exit 1): one line, no traceback
            first = str(e).strip().splitlines() or [type(e).__name__]
            print(f"orchestr {name}: {first[0]}", file=sys.stderr)
            for line in first[1:]:  # e.g. a failed service's last log lines
                print(f"  {line}", file=sys.stderr)
            return e.exit_code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
