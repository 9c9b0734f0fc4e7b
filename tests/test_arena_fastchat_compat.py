"""What the web UI logs, read by FastChat 0.2.36's own monitor code (clean_battle_data, elo_analysis)
from the optional .venv-fastchat (scripts/setup_fastchat.sh, plus polyglot/pycld2/pyicu for its
language detection and scikit-learn for its Bradley-Terry); skipped when that venv is absent. Without
it, tests/test_web.py and tests/test_arena_battles.py hold the logs to FastChat's documented shape."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from orchestr.arena.battles import clean_battles
from orchestr.arena.logs import find_log_files
from orchestr.arena.ratings import compute_leaderboard
from orchestr.arena.synthetic import simulate_battles, write_arena_logs
from orchestr.config.clean import BattlesConfig, RatingsConfig

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [REPO / ".venv-fastchat" / "bin" / "python", REPO.parent / "main" / ".venv-fastchat" / "bin" / "python"]
FASTCHAT_PY = next((p for p in CANDIDATES if p.exists()), None)

RUN = """
import json, sys
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
