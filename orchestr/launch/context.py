"""The recorded deployment as the context of the day-2 commands.

While a deployment is recorded (the state file), `orchestr eval|clean|train|chat|test-message`
start from *its* settings: the launch's own overrides (its cluster, ports, models, web log folder;
`train` its models only, so training stays on this machine unless told otherwise),
the web UIs' vote logs on every node (fetched over the node's transport into one folder), the
API's address and key, the controller and its secret. An override given on the command line
wins over the deployment's for the same key (and a group choice like `cluster=x` drops the
deployment's keys below it). `--no-deployment` ignores the record.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from orchestr.launch import secret_files
from orchestr.launch import state as state_mod

NO_DEPLOYMENT = "--no-deployment"
DEFAULT_WEB_LOG_DIR = "~/.local/share/orchestr/logs"
# keys a recorded override never carries: secrets (they reach commands by their files), the
# launcher's own settings, Hydra's
_SECRET_KEYS = ("services.api.api_keys", "services.web.auth", "launch.secret")
_NOT_CARRIED = ("launch", "hydra", *_SECRET_KEYS)
# the transports whose nodes share this machine's filesystem (Slurm's nodes: by requirement)
_SHARED_FS = ("local", "slurm", "ray")


def override_key(arg: str) -> str:
    """`+cluster.workers.w1.port=3` -> `cluster.workers.w1.port`; `cluster=x` -> `cluster`."""
    return arg.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def recorded_overrides(task_overrides: list[str]) -> list[str]:
    """The launch's overrides that the other commands compose too (no secrets, no launch.*)."""
    return [o for o in task_overrides if not any(_under(override_key(o), k) for k in _NOT_CARRIED)]


def merge(recorded: list[str], given: list[str]) -> list[str]:
    """The deployment's overrides, less those the command line sets itself, then the command
    line. A key given covers the recorded keys below it (`cluster=x` drops `cluster.nodes...`)."""
    keys = [override_key(a) for a in given if not a.startswith("-")]
    kept = [o for o in recorded if not any(_under(override_key(o), k) for k in keys)]
    return [*kept, *given]


def gives(args: list[str], *keys: str) -> bool:
    return any(_under(override_key(a), k) for a in args if not a.startswith("-") for k in keys)


@dataclass
class Context:
    state: state_mod.DeploymentState
    path: Path
    notes: list[str] = field(default_factory=list)

    def say(self) -> None:
        what = "; ".join(self.notes)
        print(f"[orchestr] using the running deployment ({self.path}): {what} "
              f"(`{NO_DEPLOYMENT}` to ignore it, or override any key)", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ web logs
    def web_log_folders(self) -> list[tuple[str, str, str]]:
        """(process, node, log folder on the node) of every web UI of the deployment."""
        out = []
        for rec in self.state.processes:
            if rec.spec.service != "web":
                continue
            argv = rec.spec.argv
            folder = argv[argv.index("--log-dir") + 1] if "--log-dir" in argv[:-1] else DEFAULT_WEB_LOG_DIR
            out.append((rec.name, rec.node, folder))
        return out

    def vote_folders(self, gather_dir: Path | None = None) -> list[str]:
        """The web UIs' log folders as this machine can read them: a shared filesystem's as they
        are, an SSH node's fetched (its `*-conv.json` day files) into `gather_dir/<process>`."""
        from orchestr.launch.backends import Runners

        gather_dir = gather_dir or self.gather_dir()
        folders: list[str] = []
        runners = Runners(self.state.nodes)
        try:
            for name, node, folder in self.web_log_folders():
                transport = self.state.nodes[node].transport
                if transport in _SHARED_FS:
                    folders.append(str(Path(folder).expanduser()))
                    continue
                here = gather_dir / name
                shutil.rmtree(here, ignore_errors=True)
                here.mkdir(parents=True, exist_ok=True)
                runners[node].fetch_files(folder, "*-conv.json", here)
                folders.append(str(here))
        finally:
            runners.close()
        return list(dict.fromkeys(folders))

    def gather_dir(self) -> Path:
        return self.path.with_name(self.path.stem + ".votes")

    def merged_votes(self, out: Path | None = None) -> Path:
        """Every web UI's day files in one folder (same-day files of several UIs concatenated:
        the logs are JSON lines), for the commands that read one folder (`train.data`)."""
        folders = self.vote_folders()
        if len(folders) == 1 and out is None:
            return Path(folders[0])
        out = out or self.gather_dir() / "all"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        for folder in folders:
            for day in sorted(Path(folder).glob("*-conv.json")):
                with open(out / day.name, "ab") as dst:
                    data = day.read_bytes()
                    dst.write(data if data.endswith(b"\n") or not data else data + b"\n")
        return out

    # ------------------------------------------------------------------ secrets
    def api_key(self) -> str | None:
        folder = secret_files.secrets_dir(self.path)
        try:
            text = Path(secret_files.secret_path(folder, secret_files.API_KEYS_VAR)).read_text()
        except OSError:
            return None
        keys = [k.strip() for k in text.replace(",", "\n").splitlines() if k.strip()]
        return keys[0] if keys else None


def _state_file_arg(args: list[str]) -> str | None:
    for a in args:
        if override_key(a) == "launch.state_file" and "=" in a:
            return a.split("=", 1)[1]
    return None


def load(args: list[str]) -> Context | None:
    """The recorded deployment (None when there is none)."""
    path = state_mod.state_path(_state_file_arg(args))
    try:
        state = state_mod.load(path)
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable record is `orchestr status`'s to report
    return Context(state, path) if state is not None else None


def _list_override(key: str, items: list[str]) -> str:
    quoted = ",".join("'" + i.replace("\\", "\\\\").replace("'", "\\'") + "'" for i in items)
    return f"{key}=[{quoted}]"


def apply(command: str, args: list[str]) -> list[str]:
    """The command line `command` runs with in the recorded deployment's context."""
    if NO_DEPLOYMENT in args:
        return [a for a in args if a != NO_DEPLOYMENT]
    if any(a in ("-h", "--help", "--hydra-help") for a in args):
        return args
    ctx = load(args)
    if ctx is None:
        return args
    handler = _HANDLERS.get(command)
    if handler is None:
        return args
    out = handler(ctx, args)
    if ctx.notes:
        ctx.say()
    return out


def _hydra_args(ctx: Context, args: list[str], only: tuple[str, ...] = ()) -> list[str]:
    recorded = [o for o in ctx.state.overrides if not only or any(_under(override_key(o), k) for k in only)]
    out = merge(recorded, args)
    carried = out[: len(out) - len(args)]
    if carried:
        ctx.notes.append(f"its overrides {' '.join(carried)}")
    return out


def _eval(ctx: Context, args: list[str]) -> list[str]:
    out = _hydra_args(ctx, args)
    if ctx.state.api:
        ctx.notes.append(f"API {ctx.state.api}")
    key = ctx.api_key()
    if key and not os.environ.get("ORCHESTR_API_KEY"):  # the eval client's fallback key
        os.environ["ORCHESTR_API_KEY"] = key
        ctx.notes.append("its API key")
    return out


def _clean(ctx: Context, args: list[str]) -> list[str]:
    out = _hydra_args(ctx, args)
    if gives(args, "clean.battles.log_dirs", "clean.chats.log_dirs", "services.web.log_dir"):
        return out
    folders = ctx.vote_folders()
    if folders:
        out += [_list_override("clean.battles.log_dirs", folders), _list_override("clean.chats.log_dirs", folders)]
        ctx.notes.append(f"web UI logs {', '.join(folders)}")
    return out


def _train(ctx: Context, args: list[str]) -> list[str]:
    # its models, not its cluster: training runs here unless the command line names a cluster
    out = _hydra_args(ctx, args, only=("model", "models"))
    dpo = any(a in ("train=dpo", "train.method=dpo") for a in out)
    if dpo and not gives(args, "train.data") and ctx.web_log_folders():
        folder = ctx.merged_votes()
        out.append(f"train.data={folder}")
        ctx.notes.append(f"arena votes of its web UIs ({folder})")
    return out


def _chat(ctx: Context, args: list[str]) -> list[str]:
    if "--api-base" in args or any(a.startswith("--api-base=") for a in args) or not ctx.state.api:
        return args
    if any("=" in a and not a.startswith("-") for a in args):  # config overrides: a model loaded here
        return args
    key = ctx.api_key()
    if key and not os.environ.get("OPENAI_API_KEY"):
        os.environ["OPENAI_API_KEY"] = key
    ctx.notes.append(f"API {ctx.state.api}")
    return ["--api-base", ctx.state.api, *args]


def _test_message(ctx: Context, args: list[str]) -> list[str]:
    if any(a.startswith("--controller-address") for a in args):
        return args
    if ctx.state.secret_file and not (os.environ.get("ORCHESTR_SECRET") or os.environ.get("ORCHESTR_SECRET_FILE")):
        os.environ["ORCHESTR_SECRET_FILE"] = ctx.state.secret_file
    ctx.notes.append(f"controller {ctx.state.controller}")
    return ["--controller-address", ctx.state.controller, *args]


_HANDLERS = {"eval": _eval, "clean": _clean, "train": _train, "chat": _chat, "test-message": _test_message}
