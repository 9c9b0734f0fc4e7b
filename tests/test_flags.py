"""Each service setting is declared once, in its schema (orchestr/config/serving.py): the
service's own flags and the launcher's argv are both derived from it, so they cannot disagree."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import typing

import pytest

from orchestr.config.flags import add_flags, flag, from_args, to_argv
from orchestr.config.serving import (
    ApiServiceConfig,
    ControllerServiceConfig,
    EngineConfig,
    WebModerationConfig,
    WebServiceConfig,
    WorkerConfig,
    WorkerServiceConfig,
)

# service module -> the schema sections its flags come from
SERVICES = {
    "orchestr.services.controller": [ControllerServiceConfig],
    "orchestr.services.model_worker": [WorkerServiceConfig, WorkerConfig, EngineConfig],
    "orchestr.services.multi_model_worker": [WorkerServiceConfig, WorkerConfig, EngineConfig],
    "orchestr.services.openai_api_server": [ApiServiceConfig],
    "orchestr.services.web": [WebServiceConfig],
}


def settings(schema: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(flag, field) of every setting of a schema, nested sections included."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        if f.name in getattr(schema, "LAUNCHER_ONLY", ()):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += settings(hints[f.name], f"{prefix}{f.name}_")
        else:
            out.append((f.metadata.get("flag") or flag(f.name, prefix), f))
    return out


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_each_service_offers_every_setting_of_its_schema(module: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for schema in SERVICES[module]:
        for name, _ in settings(schema):
            assert f"{name} " in out.stdout, f"{module} lacks {name} ({schema.__name__})"


def test_no_setting_is_missing_its_help() -> None:
    for schemas in SERVICES.values():
        for schema in schemas:
            for name, f in settings(schema):
                assert f.metadata.get("help"), f"{schema.__name__}: {name} has no help"


@pytest.mark.parametrize("obj", [
    ControllerServiceConfig(host="10.0.0.1", port=1234, dispatch_method="lottery", heart_beat_expiration=7.5),
    WorkerServiceConfig(host="0.0.0.0", heart_beat_interval=2.0, ssl=True),
    EngineConfig(batching=False, max_batch_size=3, num_threads=2),
    ApiServiceConfig(port=9, worker_timeout_s=5.0, allowed_origins=["http://a", "http://b"], allow_credentials=True),
    WebServiceConfig(mode="single", arena_excluded_pairs=[["a", "b"]], arena_sampling_weights={"a": 2.0},
                     moderation=WebModerationConfig(enabled=True, blocked_words=["x y"], timeout_s=3.0)),
], ids=lambda o: type(o).__name__)
def test_the_launchers_argv_parses_back_to_the_same_settings(obj) -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, type(obj))
    back = from_args(type(obj), parser.parse_args(to_argv(obj)))
    launcher_only = set(getattr(type(obj), "LAUNCHER_ONLY", ()))
    for f in dataclasses.fields(obj):
        if f.name not in launcher_only:
            assert getattr(back, f.name) == getattr(obj, f.name), f.name


def test_defaults_are_left_out_of_the_argv_but_host_and_port_stay() -> None:
    assert to_argv(ControllerServiceConfig(host="h")) == ["--host", "h", "--port", "21001"]
    assert to_argv(EngineConfig()) == []
    assert to_argv(EngineConfig(batching=False)) == ["--no-batching"]
