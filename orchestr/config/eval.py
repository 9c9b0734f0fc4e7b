"""Schemas for `orchestr eval`: benches, judges and the eval steps (owned by the eval work)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BenchConfig:
    name: str = "orchestr_mini"


@dataclass
class JudgeConfig:
    name: str = "self"


@dataclass
class EvalConfig:
    step: str = "all"
