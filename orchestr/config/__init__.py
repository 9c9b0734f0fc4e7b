"""Typed configuration: the root schema, its registration in Hydra's ConfigStore, and composition.

Every key is declared once in a dataclass here (or in the section modules), given its default
there, and validated by Hydra when a config is composed, so a wrong key or type fails before
anything starts, with the full key in the message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from orchestr.config.clean import CleanConfig
from orchestr.config.eval import BenchConfig, EvalConfig, JudgeConfig
from orchestr.config.serving import (
    ClusterConfig,
    EngineConfig,
    LaunchConfig,
    ModelConfig,
    ServicesConfig,
)
from orchestr.config.train import TrainConfig

__all__ = ["OrchestrConfig", "CONF_DIR", "register_configs", "compose", "config_dir"]


@dataclass
class OrchestrConfig:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = MISSING  # the selected model (`model=...`)
    models: dict[str, ModelConfig] = field(default_factory=dict)  # extra models workers can name
    engine: EngineConfig = field(default_factory=EngineConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def config_dir() -> Path:
    """The packaged `conf/` tree: inside the wheel (orchestr/conf) or at the checkout root."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError("orchestr's conf/ tree is missing from the installation")


CONF_DIR = str(config_dir())
_registered = False


def register_configs() -> None:
    """Register the root schema as `base_config` (the first entry of conf/config.yaml's defaults)."""
    global _registered
    if _registered:
        return
    ConfigStore.instance().store(name="base_config", node=OrchestrConfig)
    _registered = True


def user_search_path_overrides() -> list[str]:
    """`ORCHESTR_CONFIG_PATH=dir1:dir2` adds user config folders in front of the packaged ones."""
    extra = [p for p in os.environ.get("ORCHESTR_CONFIG_PATH", "").split(os.pathsep) if p]
    if not extra:
        return []
    paths = ",".join(f"file://{Path(p).expanduser().resolve()}" for p in extra)
    return [f"hydra.searchpath=[{paths}]"]


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose the config outside a Hydra app (for commands with their own argparse flags)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="orchestr"):
        return hydra_compose(
            config_name="config", overrides=list(overrides or []) + user_search_path_overrides()
        )
