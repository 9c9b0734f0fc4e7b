"""The deployment's secrets on disk: 0600 files in a 0700 folder beside the state file, named to
each process by an environment variable (never argv: `ps` shows a command line to every user).

* the service secret every internal hop carries (`ORCHESTR_SECRET_FILE`): `launch.secret`, else
  `$ORCHESTR_SECRET`, else generated afresh for each launch;
* the OpenAI API's keys (`ORCHESTR_API_KEYS_FILE`) from `services.api.api_keys`;
* the web UI's logins (`ORCHESTR_WEB_AUTH_FILE`) from `services.web.auth`.

A backend places the files on the node (`ProcessSpec.env_files`); the values are scrubbed from
Hydra's record of the run (`.hydra/*.yaml`) because a user may pass them as overrides.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from orchestr.config import redact
from orchestr.config.serving import LaunchConfig, ServicesConfig

SERVICE_VAR = "ORCHESTR_SECRET_FILE"
API_KEYS_VAR = "ORCHESTR_API_KEYS_FILE"
WEB_AUTH_VAR = "ORCHESTR_WEB_AUTH_FILE"
_FILES = {SERVICE_VAR: "service_secret", API_KEYS_VAR: "api_keys", WEB_AUTH_VAR: "web_auth"}


def secrets_dir(state_file: Path) -> Path:
    return state_file.with_name(state_file.stem + ".secrets")


def secret_path(folder: Path, var: str) -> str:
    return str(folder / _FILES[var])


@dataclass
class DeploymentSecrets:
    service: str
    api_keys: list[str] = field(default_factory=list)
    web_auth: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, launch: LaunchConfig, services: ServicesConfig) -> DeploymentSecrets:
        service = launch.secret or os.environ.get("ORCHESTR_SECRET") or secrets.token_urlsafe(32)
        return cls(service=service, api_keys=list(services.api.api_keys),
                   web_auth=list(getattr(services.web, "auth", []) or []))

    def values(self) -> list[str]:
        """Every secret string, for scrubbing (the password part of a login too)."""
        out = [self.service, *self.api_keys, *self.web_auth]
        out += [login.partition(":")[2] for login in self.web_auth]
        return sorted({v for v in out if v}, key=len, reverse=True)  # longest first

    def write(self, folder: Path) -> None:
        write_private(Path(secret_path(folder, SERVICE_VAR)), self.service + "\n")
        for var, items in ((API_KEYS_VAR, self.api_keys), (WEB_AUTH_VAR, self.web_auth)):
            if items:
                write_private(Path(secret_path(folder, var)), "\n".join(items) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (never briefly readable by others)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_service_secret(path: str | None) -> str | None:
    try:
        return Path(path).read_text().strip() or None if path else None
    except OSError:
        return None


def scrub(paths: list[Path], values: list[str]) -> None:
    """Replace each secret value in these text files (Hydra's config.yaml, overrides.yaml ...)."""
    for p in paths:
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        clean = redact.scrub(text, values)
        if clean != text:
            p.write_text(clean)


def remove(folder: Path) -> None:
    for p in folder.glob("*"):
        p.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass
