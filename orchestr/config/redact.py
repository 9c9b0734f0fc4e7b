"""Hydra's own printing (`--cfg`, `--info`, `--help`) with the secrets a user typed scrubbed.

Hydra prints the composed config (and, for `--cfg hydra` or `--info`, the overrides as typed)
before any orchestr code runs, so `orchestr launch services.api.api_keys=[sk-...] --cfg job`
would show the key. The secret-bearing keys are few and known: their values, from the overrides
as typed and from the composed config (a `${oc.env:...}` resolved), become `***` in whatever
Hydra writes while it prints.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Any

REDACTED = "***"
SECRET_KEYS = ("launch.secret", "services.api.api_keys", "services.web.auth")
PRINT_FLAGS = frozenset({"--cfg", "-c", "--info", "-i", "--help", "-h"})


def prints_config(argv: list[str]) -> bool:
    return any(arg.split("=", 1)[0] in PRINT_FLAGS for arg in argv)


def _strings(value: Any) -> list[str]:
    items = value if isinstance(value, list | tuple) else [value]
    out = [str(v) for v in items if v is not None and str(v)]
    return out + [v.partition(":")[2] for v in out if ":" in v]  # a login's password on its own


def _typed(argv: list[str]) -> set[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, found = OverridesParser.create(), set()
    for arg in argv:
        if arg.lstrip("+~").split("=", 1)[0] not in SECRET_KEYS:
            continue
        try:
            found.update(_strings(parser.parse_overrides([arg])[0].value()))
        except Exception:  # a malformed override: Hydra reports it; scrub the raw value too
            found.add(arg.split("=", 1)[1])
    return found


def _composed(argv: list[str]) -> set[str]:
    from omegaconf import OmegaConf

    from orchestr.config import compose

    overrides = [a for a in argv if not a.startswith("-") and "=" in a and not a.startswith("hydra.")]
    try:
        cfg = compose(overrides)
    except Exception:  # Hydra will report the bad override itself
        return set()
    found: set[str] = set()
    for key in SECRET_KEYS:
        try:
            node = OmegaConf.select(cfg, key)
            found.update(_strings(OmegaConf.to_object(node) if OmegaConf.is_config(node) else node))
        except Exception:  # e.g. an unset ${oc.env:...}: nothing to scrub
            continue
    return found


def secret_values(argv: list[str]) -> list[str]:
    """The secret strings this command line sets, longest first (so no part of one is left)."""
    values = _typed(argv) | _composed(argv)
    return sorted((v for v in values if v and v != REDACTED), key=len, reverse=True)


def scrub(text: str, values: list[str]) -> str:
    """Each value (with the quotes around it, if any) becomes `'***'`: quoted, so a scrubbed YAML
    file or `--cfg` printout still parses, and an override line stays valid Hydra syntax."""
    for v in values:
        text = re.sub(r"""(['"]?)""" + re.escape(v) + r"\1", lambda _m: f"'{REDACTED}'", text)
    return text


@contextmanager
def scrubbed_prints(argv: list[str]) -> Iterator[None]:
    """Around a Hydra app's run: when the command line asks Hydra to print its config, what is
    written to stdout/stderr meanwhile is held and written once scrubbed (it is short)."""
    values = secret_values(argv) if prints_config(argv) else []
    if not values:
        yield
        return
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            yield
    finally:
        for held, stream in ((out, sys.stdout), (err, sys.stderr)):
            stream.write(scrub(held.getvalue(), values))
            stream.flush()


def rerun_line(argv: list[str]) -> str:
    """The command line `argv` as a shell line to run again, typed secrets as `***`. The program
    comes first as it is (`orchestr eval`: orchestr.cli names the subcommand so)."""
    import shlex

    return scrub(" ".join([argv[0], *map(shlex.quote, argv[1:])]), sorted(_typed(argv[1:]), key=len, reverse=True))
