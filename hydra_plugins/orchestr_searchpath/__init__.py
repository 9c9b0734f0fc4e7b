"""Hydra discovers this plugin in the `hydra_plugins` namespace: `ORCHESTR_CONFIG_PATH=dir1:dir2`
puts user config folders (e.g. `model/my-model.yaml`) in front of orchestr's packaged `conf/`,
for every Hydra entry point (launch, eval, clean) and the compose API alike."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def user_config_dirs() -> list[Path]:
    raw = os.environ.get("ORCHESTR_CONFIG_PATH", "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p]


class OrchestrSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # each in front of the packaged tree, in the order given (the first one wins)
        for path in reversed(user_config_dirs()):
            search_path.prepend(provider="orchestr-user", path=f"file://{path}")
