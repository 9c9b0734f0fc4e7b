"""Where processes find their secrets: the environment, or a file the environment names.

* ``ORCHESTR_SECRET`` / ``ORCHESTR_SECRET_FILE``: the deployment's shared service secret, sent as
  ``Authorization: Bearer <secret>`` on every internal hop (controller, workers).
* ``ORCHESTR_API_KEYS`` / ``ORCHESTR_API_KEYS_FILE``: keys clients of the OpenAI API send
  (comma- or newline-separated).
* ``ORCHESTR_WEB_AUTH`` / ``ORCHESTR_WEB_AUTH_FILE``: web UI logins, ``user:password`` pairs
  (comma- or newline-separated).

Secrets never travel on a command line (``ps`` shows it to every user of the machine); a file
must not be readable by group or others.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from orchestr.errors import UserError


class SecretError(UserError, ValueError):
    """A secret file is missing, unreadable or readable by others."""


def _read_file(path: str, var: str) -> str:
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
        text = p.read_text()
    except OSError as e:
        raise SecretError(f"{var}={path}: cannot read it ({e.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"{var}={path}: the file is readable by others; run `chmod 600 {path}`")
    return text


def _value(name: str) -> str | None:
    """``$NAME`` if set, else the contents of the file named by ``$NAME_FILE``, else None."""
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(name + "_FILE")
    if path:
        return _read_file(path, name + "_FILE")
    return None


def _items(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").replace("\n", ",").split(",") if x.strip()]


def service_secret() -> str | None:
    """The deployment's shared service secret, or None when none is configured."""
    value = _value("ORCHESTR_SECRET")
    return value.strip() if value and value.strip() else None


def api_keys() -> list[str]:
    return _items(_value("ORCHESTR_API_KEYS"))


def web_auth() -> list[tuple[str, str]]:
    pairs = []
    for item in _items(_value("ORCHESTR_WEB_AUTH")):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise SecretError("ORCHESTR_WEB_AUTH: each entry must be user:password")
        pairs.append((user, password))
    return pairs


def bearer(secret: str | None) -> dict[str, str]:
    """The header that carries ``secret`` (none when there is no secret)."""
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def token_matches(header: str | None, secret: str) -> bool:
    """Whether an ``Authorization`` header carries ``secret`` (constant-time comparison)."""
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), secret.encode())
