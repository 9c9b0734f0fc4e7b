"""Command-line flags derived from a schema dataclass (as vLLM's EngineArgs does): a field's
name, type, default and `metadata["help"]` give both the service's argparse option and the
argv the launcher renders, so the two cannot disagree.

`--field-name` for each field; booleans are `--x/--no-x`, Enums take their values as choices,
lists and dicts travel as JSON, a nested dataclass's fields get its name as prefix
(`moderation.url` -> `--moderation-url`). Fields named in the schema's `LAUNCHER_ONLY` (where a
service runs, its restart policy, secrets that travel by file) are not flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from enum import Enum
from typing import Any


def flag(name: str, prefix: str = "") -> str:
    return "--" + (prefix + name).replace("_", "-")


def _skipped(schema: type, only: Iterable[str] | None, skip: Iterable[str]) -> set[str]:
    names = {f.name for f in dataclasses.fields(schema)}
    out = set(getattr(schema, "LAUNCHER_ONLY", ())) | set(skip)
    if only is not None:
        out |= names - set(only)
    return out


def _base_type(hint: Any) -> Any:
    """`int | None` -> int; `list[str]` -> list; `dict[str, float]` -> dict."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _json(kind: type, name: str):
    def parse(text: str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"{name} must be JSON ({e.msg})") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"{name} must be a JSON {kind.__name__}")
        return value

    return parse


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_flags(parser: argparse.ArgumentParser, schema: type, *, only: Iterable[str] | None = None,
              skip: Iterable[str] = (), prefix: str = "") -> None:
    """Add an option for each field of `schema` (its default, type and help included)."""
    hints = typing.get_type_hints(schema)
    skipped = _skipped(schema, only, skip)
    for f in dataclasses.fields(schema):
        if f.name in skipped:
            continue
        name = f.metadata.get("flag") or flag(f.name, prefix)
        kind, default = _base_type(hints[f.name]), _default(f)
        dest, help_ = (prefix + f.name).replace("-", "_"), f.metadata.get("help")
        if dataclasses.is_dataclass(kind):
            add_flags(parser, kind, prefix=f"{prefix}{f.name}_")
        elif kind is bool:
            parser.add_argument(name, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif isinstance(kind, type) and issubclass(kind, Enum):
            parser.add_argument(name, dest=dest, choices=[m.value for m in kind],
                                default=None if default is None else kind(default).value, help=help_)
        elif kind in (list, dict):
            parser.add_argument(name, dest=dest, type=_json(kind, name), default=default, help=help_)
        else:
            parser.add_argument(name, dest=dest, type=kind, default=default, help=help_)


ALWAYS = ("host", "port")  # rendered even at their defaults: a plan line says where a service listens


def to_argv(obj: Any, *, only: Iterable[str] | None = None, skip: Iterable[str] = (), prefix: str = "") -> list[str]:
    """The flags that give a service `obj`'s values. A value equal to the schema's default is
    left out (the service's flag has that same default), so plan lines show what was chosen."""
    argv: list[str] = []
    skipped = _skipped(type(obj), only, skip)
    for f in dataclasses.fields(obj):
        if f.name in skipped:
            continue
        value = getattr(obj, f.name)
        if value is None or (value == _default(f) and f.name not in ALWAYS):
            continue
        name = f.metadata.get("flag") or flag(f.name, prefix)
        if dataclasses.is_dataclass(value):
            argv += to_argv(value, prefix=f"{prefix}{f.name}_")
        elif isinstance(value, bool):
            argv.append(name if value else "--no-" + name[2:])
        elif isinstance(value, Enum):
            argv += [name, str(value.value)]
        elif isinstance(value, list | dict):
            argv += [name, json.dumps(value)]
        else:
            argv += [name, str(value)]
    return argv


def from_args(schema: type, args: argparse.Namespace, *, prefix: str = "", **launcher_values: Any):
    """`schema` built from parsed flags (fields that are not flags keep their defaults or take
    `launcher_values`)."""
    hints = typing.get_type_hints(schema)
    values: dict[str, Any] = dict(launcher_values)
    for f in dataclasses.fields(schema):
        dest = (prefix + f.name).replace("-", "_")
        kind = _base_type(hints[f.name])
        if dataclasses.is_dataclass(kind) and f.name not in values:
            values[f.name] = from_args(kind, args, prefix=f"{prefix}{f.name}_")
        elif hasattr(args, dest) and f.name not in values:
            values[f.name] = getattr(args, dest)
    return schema(**values)
