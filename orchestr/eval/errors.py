"""The one error type the eval commands turn into a clean message (no stack trace) for the user."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from orchestr.errors import UserError


class EvalError(UserError):
    """A user-fixable problem: missing file, unreachable endpoint, bad key. The message says what to set."""


@contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """For a command's config and data loading: an :class:`EvalError` or a bad config override
    ends the command with one message on stderr and exit status 2."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except EvalError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OmegaConfBaseException as e:
        print(f"{prog}: bad override: {e}", file=sys.stderr)
        raise SystemExit(2) from None
