"""The state file: what a launched deployment is made of, for `status`, `logs` and `stop`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestr.config.serving import NodeConfig
from orchestr.launch.spec import ProcessRecord


@dataclass
class DeploymentState:
    run_dir: str
    controller: str
    api: str | None
    web: str | None
    nodes: dict[str, NodeConfig]
    processes: list[ProcessRecord] = field(default_factory=list)
    supervisor_pid: int | None = None
    created: float = field(default_factory=time.time)
    secret_file: str | None = None  # where the service secret is (the file, never the value)
    # the launch's Hydra overrides, secrets left out: `orchestr eval|clean|train` compose them too
    overrides: list[str] = field(default_factory=list)
    # who watches it: an attached launcher's pid (the detached one's is `supervisor_pid`) and a
    # token that tells it the record is still its own
    owner_pid: int | None = None
    owner: str | None = None
    stopping: bool = False  # `orchestr stop` is ending it: watchers leave, nothing restarts

    def record(self, name: str) -> ProcessRecord | None:
        return next((p for p in self.processes if p.name == name), None)

    def to_dict(self) -> dict:
        return {
            "run_dir": self.run_dir, "controller": self.controller, "api": self.api, "web": self.web,
            "nodes": {k: asdict(v) for k, v in self.nodes.items()},
            "processes": [p.to_dict() for p in self.processes],
            "supervisor_pid": self.supervisor_pid, "created": self.created, "secret_file": self.secret_file,
            "overrides": self.overrides, "owner_pid": self.owner_pid, "owner": self.owner,
            "stopping": self.stopping,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DeploymentState:
        return cls(run_dir=d["run_dir"], controller=d["controller"], api=d.get("api"), web=d.get("web"),
                   nodes={k: NodeConfig(**v) for k, v in d["nodes"].items()},
                   processes=[ProcessRecord.from_dict(p) for p in d["processes"]],
                   supervisor_pid=d.get("supervisor_pid"), created=d.get("created", 0.0),
                   secret_file=d.get("secret_file"), overrides=list(d.get("overrides", [])),
                   owner_pid=d.get("owner_pid"), owner=d.get("owner"), stopping=bool(d.get("stopping", False)))


def state_path(configured: str | None = None) -> Path:
    raw = configured or os.environ.get("ORCHESTR_STATE_FILE") or "~/.cache/orchestr/deployment.json"
    return Path(raw).expanduser()


def save(state: DeploymentState, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # only its owner reads it
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(json.dumps(state.to_dict(), indent=2))
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def load(path: Path) -> DeploymentState | None:
    try:
        return DeploymentState.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def still_owned(path: Path, owner: str) -> str | None:
    """Why a watcher holding token `owner` must leave the deployment at `path` (None: it is still
    its own): the record is gone, `orchestr stop` is ending it, or another launch took it over."""
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return "its record is gone (stopped elsewhere)"
    except ValueError:
        return None  # a half-written file is never seen (atomic replace), but be safe
    if d.get("stopping"):
        return "`orchestr stop` is stopping it"
    if d.get("owner") not in (None, owner):
        return "another launch took it over"
    return None


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
