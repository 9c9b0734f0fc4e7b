"""What the web UI logs, read by FastChat 0.2.36's own monitor code (clean_battle_data, elo_analysis),
and style control against FastChat's own fit. Runs with the interpreter of a FastChat analysis venv
(scripts/setup_fastchat_monitor.sh; ORCHESTR_FASTCHAT_PYTHON, or a .venv-fastchat that has the analysis
dependencies); skipped otherwise. Without it, tests/test_web.py and tests/test_arena_battles.py hold
the logs to FastChat's documented shape."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from orchestr.arena.battles import clean_battles
from orchestr.arena.logs import find_log_files
from orchestr.arena.ratings import compute_leaderboard
from orchestr.arena.synthetic import simulate_battles, write_arena_logs
from orchestr.config.clean import BattlesConfig, RatingsConfig

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [Path(p) for p in [os.environ.get("ORCHESTR_FASTCHAT_PYTHON")] if p] + [
    REPO / ".venv-fastchat" / "bin" / "python", REPO.parent / "main" / ".venv-fastchat" / "bin" / "python"]
FASTCHAT_PY = next((p for p in CANDIDATES if p.exists()), None)

# elo_analysis imports fastchat.model (torch, transformers) only for model descriptions on its plots:
# a stand-in module keeps the analysis venv small. clean_battle_data and the rating code are FastChat's.
RUN = """
import json, sys, types
model = types.ModuleType("fastchat.model")
model.__path__ = []
registry = types.ModuleType("fastchat.model.model_registry")
registry.get_model_info = lambda name: types.SimpleNamespace(simple_name=name, link="", description="")
sys.modules.update({"fastchat.model": model, "fastchat.model.model_registry": registry})
from fastchat.serve.monitor.clean_battle_data import clean_battle_data
from fastchat.serve.monitor.elo_analysis import report_elo_analysis_results
battles = clean_battle_data(sys.argv[1:], [])
res = report_elo_analysis_results(battles, rating_system="bt", num_bootstrap=20)
print(json.dumps({"n": len(battles), "anony": sum(b["anony"] for b in battles),
                  "rating": {k: float(v) for k, v in res["elo_rating_final"].items()}}))
"""


@pytest.mark.skipif(FASTCHAT_PY is None, reason="FastChat 0.2.36 venv (.venv-fastchat) not built")
def test_fastchat_reads_our_logs_and_agrees_on_battles_and_ratings(tmp_path: Path) -> None:
    battles = simulate_battles({"strong": 1150, "middle": 1000, "weak": 850}, 300, seed=3, tie_prob=0.1)
    for b in battles[:60]:
        b["anony"] = False  # side-by-side votes: FastChat keeps them as named battles, rates only anonymous
    write_arena_logs(tmp_path / "logs", battles)
    files = [str(f) for f in find_log_files([tmp_path / "logs"])]
    out = subprocess.run([str(FASTCHAT_PY), "-c", RUN, *files], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    ours, _ = clean_battles(BattlesConfig(identity_words=[]), [str(tmp_path / "logs")])
    assert theirs["n"] == len(ours) == 300
    assert theirs["anony"] == sum(b["anony"] for b in ours) == 240
    table, _ = compute_leaderboard(ours, RatingsConfig(bootstrap_rounds=20), progress=False)
    for model, rating in table.set_index("model")["rating"].items():
        assert abs(rating - theirs["rating"][model]) < 0.5, (model, rating, theirs["rating"])


# Style control is newer than 0.2.36: FastChat's fastchat/serve/monitor/rating_systems.py (main branch),
# named by ORCHESTR_FASTCHAT_RATING_SYSTEMS, run by the FastChat interpreter above.
RATING_SYSTEMS = os.environ.get("ORCHESTR_FASTCHAT_RATING_SYSTEMS")
STYLE_RUN = """
import importlib.util, json, sys
import pandas as pd
spec = importlib.util.spec_from_file_location("rating_systems", sys.argv[1])
rs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rs)
ratings, coef = rs.compute_style_control(pd.DataFrame(json.load(open(sys.argv[2]))))
print(json.dumps({"ratings": {k: float(v) for k, v in ratings.items()}, "coef": [float(c) for c in coef]}))
"""


@pytest.mark.skipif(FASTCHAT_PY is None or not RATING_SYSTEMS, reason="FastChat's rating_systems.py not given")
def test_style_control_matches_fastchats(tmp_path: Path) -> None:
    import numpy as np

    from orchestr.arena.ratings import battles_frame, style_bt_ratings
    from tests.test_arena_style import verbose_battles

    rng = np.random.default_rng(1)
    battles = verbose_battles()
    for b in battles:  # some markdown on both sides (FastChat's fit needs every feature to vary)
        for side in "ab":
            b["conv_metadata"][f"header_count_{side}"] = {"h1": int(rng.integers(0, 3))}
            b["conv_metadata"][f"list_count_{side}"] = {"ordered": int(rng.integers(0, 5))}
            b["conv_metadata"][f"bold_count_{side}"] = {"**": int(rng.integers(0, 4))}
    (tmp_path / "battles.json").write_text(json.dumps(battles))
    out = subprocess.run([str(FASTCHAT_PY), "-c", STYLE_RUN, RATING_SYSTEMS, str(tmp_path / "battles.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    cfg = RatingsConfig(style_control=True)
    ours, coef = style_bt_ratings(battles_frame(battles, cfg), cfg)
    for model, rating in ours.items():
        assert abs(rating - theirs["ratings"][model]) < 0.1, (ours, theirs)
    assert np.allclose(coef.to_numpy(), theirs["coef"], atol=1e-3)
