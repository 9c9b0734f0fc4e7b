"""What the web UI logs, read by FastChat 0.2.36's own monitor code (clean_battle_data, elo_analysis),
FastChat's show_result on our judgment files (a resumed FastChat pair file included), and style
control against FastChat's own fit. Runs with the interpreter of a FastChat analysis venv
(scripts/setup_fastchat_monitor.sh, then ORCHESTR_FASTCHAT_PYTHON=<venv>/bin/python); skipped
otherwise. Without it, tests/test_web.py and tests/test_arena_battles.py hold
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

# Only an interpreter named on purpose: .venv-fastchat (the serving benchmark's) lacks the analysis deps.
_given = os.environ.get("ORCHESTR_FASTCHAT_PYTHON")
FASTCHAT_PY = Path(_given) if _given and Path(_given).exists() else None

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


@pytest.mark.skipif(FASTCHAT_PY is None, reason="ORCHESTR_FASTCHAT_PYTHON not set")
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


SHOW_RESULT = """
import argparse, json, sys
import pandas as pd
import fastchat.llm_judge.show_result as sr
frames = []
sr.print = lambda *a, **k: frames.extend(x for x in a if isinstance(x, pd.DataFrame))  # keep its tables
mode, path, baseline = sys.argv[1], sys.argv[2], sys.argv[3] or None
args = argparse.Namespace(bench_name="mt_bench", input_file=path, judge_model=None, baseline_model=baseline,
                          model_list=None, mode=mode)
(sr.display_result_single if mode == "single" else sr.display_result_pairwise)(args)
print(json.dumps([f.reset_index().to_dict("records") for f in frames]))
"""


@pytest.mark.skipif(FASTCHAT_PY is None, reason="ORCHESTR_FASTCHAT_PYTHON not set")
@pytest.mark.parametrize("mode", ["single", "pairwise-baseline", "pairwise-all"])
def test_fastchat_show_result_agrees_with_our_results(tmp_path: Path, mode: str) -> None:
    import pandas as pd

    from orchestr.eval import paths
    from orchestr.eval.judge import run_judge
    from orchestr.eval.results import run_results
    from tests.judge_server import JudgeServer
    from tests.test_eval_judge_modes import cfg_for, write_answers

    write_answers(tmp_path, "base", [2] * 8)
    write_answers(tmp_path, "m", [4, 3, 1, 1, 2, 2, 2, 0])
    write_answers(tmp_path, "n", [1, 2, 3, 4, 1, 2, 3, 4])
    judge = JudgeServer(bias_a=True)
    try:
        cfg = cfg_for(tmp_path, judge, f"judge.mode={mode}", "judge.baseline_model=base", "eval.plot=false")
        if mode == "pairwise-all":  # start from a FastChat pair file: (n, m) in FastChat's order, no `turn`
            out = paths.judgment_file(str(tmp_path), "orchestr_mini", judge.model, pairwise=True)
            out.parent.mkdir(parents=True)
            out.write_text("".join(json.dumps(
                {"question_id": q, "model_1": "n", "model_2": "m", "g1_winner": "model_1", "g2_winner": "model_2",
                 "judge": [judge.model, "pair-math-v1" if q in (3, 4, 5) else "pair-v2"], "g1_user_prompt": "",
                 "g1_judgment": "", "g2_user_prompt": "", "g2_judgment": "", "tstamp": 1.0}) + "\n"
                for q in (1, 2, 3)))
        assert run_judge(cfg).failed == 0
        ours = pd.read_csv(run_results(cfg)["table"], index_col="model")
    finally:
        judge.close()
    kind = "single" if mode == "single" else "pair"
    src = paths.judgment_file(str(tmp_path), "orchestr_mini", judge.model, kind=kind)
    out = subprocess.run([str(FASTCHAT_PY), "-c", SHOW_RESULT, mode, str(src), "base" if mode != "pairwise-all" else ""],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    frames = json.loads(out.stdout.strip().splitlines()[-1])
    if mode == "single":
        turn1, turn2, average = (pd.DataFrame(f).set_index("model")["score"] for f in frames)
        for col, theirs in (("turn1", turn1), ("turn2", turn2), ("average", average)):
            assert ours[col].round(6).to_dict() == theirs.round(6).to_dict()
    else:
        theirs = pd.DataFrame(frames[0]).set_index("model")
        cols = ["win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted"]
        pd.testing.assert_frame_equal(ours[cols].sort_index(), theirs[cols].sort_index(), check_dtype=False)
