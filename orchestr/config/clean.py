"""Schemas for `orchestr clean`: arena battles, ratings and conversation-release steps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CleanConfig:
    step: str = "battles"
