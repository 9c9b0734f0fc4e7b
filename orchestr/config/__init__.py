"""Typed configuration: the root schema, its registration in Hydra's ConfigStore, and composition.

Every key is declared once in a dataclass here (or in the section modules), given its default
there, and validated by Hydra when a config is composed, so a wrong key or type fails before
anything starts, with the full key in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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
from orchestr.errors import ConfigError

__all__ = ["OrchestrConfig", "CONF_DIR", "register_configs", "compose", "config_dir", "to_typed"]


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


def composition_error(e: Exception) -> ConfigError:
    """Hydra's composition failure as one line naming the key (Hydra's own report is a
    multi-line message, often without the key)."""
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    key = getattr(cause, "full_key", None) or "config"
    message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if "is not a subclass of WorkerConfig" in message:
        return ConfigError("cluster.workers", "add a worker from the command line with "
                           "`+worker@cluster.workers.NAME=default cluster.workers.NAME.port=PORT`")
    if "is not a subclass of" in message:
        return ConfigError(str(key), f"{message} (add a whole section with a config group option)")
    if "Could not find" in message and isinstance(e, MissingConfigException):
        options = [x.strip() for x in str(e).splitlines()[1:] if x.strip() and ":" not in x]
        return ConfigError(message.split("'")[-2].split("/")[0] if "'" in message else "config",
                           f"{message}; options: {', '.join(options)}")
    return ConfigError(str(key), message)


def to_typed(node: DictConfig, key: str):
    """The schema objects of a composed section, their `__post_init__` checks run; a failed check
    becomes a `ConfigError` naming the full key (`engine.max_batch_size: must be at least 1`)."""
    try:
        return OmegaConf.to_object(node)
    except ValueError as e:
        failed = e
    # the check failed somewhere below: find the deepest section that fails on its own
    for child_key in node.keys() if isinstance(node, DictConfig) else ():
        child = node._get_node(child_key)
        if isinstance(child, DictConfig) and not child._is_none():
            try:
                OmegaConf.to_object(child)
            except ValueError:
                return to_typed(child, f"{key}.{child_key}")
    field_key, sep, message = str(failed).partition(": ")
    if sep and field_key.isidentifier():
        raise ConfigError(f"{key}.{field_key}", message) from None
    raise ConfigError(key, str(failed)) from None


_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}
_NO_COMPOSE = {"-m", "--multirun", "-h", "--help", "--hydra-help", "--info", "-i", "--shell-completion",
               "-sc", "--version"}


def check_composes(argv: list[str]) -> None:
    """Compose a Hydra app's command line once up front, so a bad override is a `ConfigError`
    (one line, exit 2) rather than Hydra's multi-line report. Sweeps are left to Hydra."""
    if _NO_COMPOSE & set(argv):
        return
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-") and (not arg.lstrip("+~").startswith("hydra.")
                                          or arg.startswith("hydra.searchpath=")):
            overrides.append(arg)
    compose(overrides)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose the config outside a Hydra app (for commands with their own argparse flags)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="orchestr"):
        # (user config folders from ORCHESTR_CONFIG_PATH: hydra_plugins/orchestr_searchpath)
        try:
            return hydra_compose(config_name="config", overrides=list(overrides or []))
        except (HydraException, OmegaConfBaseException) as e:
            raise composition_error(e) from None
