"""orchestr's exceptions: one base, and the one kind the CLI turns into a one-line message.

`UserError` is a mistake the user can fix (a config key, a flag, a missing file): `orchestr`
prints its message on one line and exits with code 2, without a traceback. Any other
`OrchestrError` is a failure while doing the work (a process that would not start, a node
that does not answer): one line too, exit code 1.
"""

from __future__ import annotations


class OrchestrError(Exception):
    """Base of orchestr's own errors."""

    exit_code = 1


class UserError(OrchestrError):
    """A mistake in the user's input; the message says what to change (one line)."""

    exit_code = 2


class ConfigError(UserError):
    """A config value that cannot work; the message starts with the full config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class LaunchError(OrchestrError):
    """A deployment that could not be started, watched or stopped."""


class NodeError(LaunchError):
    """A node that cannot be reached or a remote command that failed; names the node's key."""
