"""The one error type the eval commands turn into a clean message (no stack trace) for the user."""

from __future__ import annotations

from orchestr.errors import UserError


class EvalError(UserError):
    """A user-fixable problem: missing file, unreachable endpoint, bad key. The message says what to set."""
