"""Rating methods on synthetic battles drawn from known strengths (the truth is known, so the
estimates can be checked against it), plus the leaderboard table's shape and edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestr.arena.ratings import (
    LEADERBOARD_COLUMNS,
    battles_frame,
    bt_ratings,
    compute_leaderboard,
    leaderboard_markdown,
    online_elo,
    write_leaderboard,
)
from orchestr.arena.synthetic import simulate_battles
from orchestr.config.clean import RatingsConfig

# Mean exactly 1000 = init_rating, so BT's centred ratings and the truth share one scale.
TRUE = {"m0": 1250, "m1": 1150, "m2": 1075, "m3": 1000, "m4": 925, "m5": 850, "m6": 750}
TRUE_ORDER = list(TRUE)


def cfg(**kw) -> RatingsConfig:
    base = dict(bootstrap_rounds=40, seed=0)
    base.update(kw)
    return RatingsConfig(**base)


def test_bt_recovers_true_order_and_cis_cover_truth():
    battles = simulate_battles(TRUE, 6000, seed=11)
    table, boot = compute_leaderboard(battles, cfg(bootstrap_rounds=60), progress=False)
    assert list(table["model"]) == TRUE_ORDER
    assert boot.shape == (60, len(TRUE))
    truth = table["model"].map(TRUE)
    assert ((table["ci_lower"] <= truth) & (truth <= table["ci_upper"])).sum() >= len(TRUE) - 2, table
    # And the point estimates are close, not merely ordered.
    assert (table["rating"] - truth).abs().max() < 40, table
    # CIs are real intervals around the estimate, of a plausible width for 6000 battles.
    width = table["ci_upper"] - table["ci_lower"]
    assert ((table["ci_lower"] < table["rating"]) & (table["rating"] < table["ci_upper"])).all()
    assert width.between(10, 120).all(), width


def test_bt_95pct_intervals_cover_truth_across_datasets():
    # Coverage is a frequency: pool several independent arenas so one unlucky draw cannot decide.
    covered = total = 0
    for seed in range(5):
        table, _ = compute_leaderboard(
            simulate_battles(TRUE, 6000, seed=100 + seed), cfg(bootstrap_rounds=60, seed=seed), progress=False
        )
        truth = table["model"].map(TRUE)
        hits = int(((table["ci_lower"] <= truth) & (truth <= table["ci_upper"])).sum())
        assert hits >= len(TRUE) - 2, table
        covered += hits
        total += len(TRUE)
    assert covered / total >= 0.8, covered / total


def test_bt_ties_count_as_half_and_order_survives_them():
    battles = simulate_battles(TRUE, 6000, seed=5, tie_prob=0.15)
    assert any(b["winner"] == "tie (bothbad)" for b in battles)
    ratings = bt_ratings(battles_frame(battles), cfg())
    assert list(ratings.index) == TRUE_ORDER


def test_elo_and_bt_agree_on_order_with_plentiful_data():
    battles = simulate_battles(TRUE, 20000, seed=3)
    df = battles_frame(battles)
    elo = online_elo(df, k=4)
    bt = bt_ratings(df, cfg())
    assert list(elo.index) == list(bt.index) == TRUE_ORDER
    # Same scale: Elo hovers around the MLE.
    assert (elo - bt.reindex(elo.index)).abs().max() < 60


def test_elo_k_controls_step_size():
    df = battles_frame([{"model_a": "a", "model_b": "b", "winner": "model_a", "tstamp": 1}])
    assert online_elo(df, k=4)["a"] == pytest.approx(1002)
    assert online_elo(df, k=32)["a"] == pytest.approx(1016)
    assert online_elo(df, k=32)["b"] == pytest.approx(984)


def test_rank_by_elo_uses_elo_bootstrap():
    battles = simulate_battles(TRUE, 3000, seed=2)
    table, boot = compute_leaderboard(battles, cfg(rank_by="elo", bootstrap_rounds=10), progress=False)
    assert (table["rating"] == table["elo_rating"]).all()
    assert boot.shape == (10, len(TRUE))
    assert list(table["rank"]) == list(range(1, len(TRUE) + 1))


def test_baseline_model_pins_rating():
    battles = simulate_battles(TRUE, 2000, seed=4)
    table, _ = compute_leaderboard(battles, cfg(baseline_model="m3", baseline_rating=1200), progress=False)
    row = table.set_index("model").loc["m3"]
    assert row["rating"] == pytest.approx(1200, abs=0.1)
    assert row["ci_lower"] <= 1200.1 and row["ci_upper"] >= 1199.9


def test_undefeated_model_stays_finite_and_empty_input_gives_empty_table(tmp_path):
    one = [{"model_a": "x", "model_b": "y", "winner": "model_a", "tstamp": 1.0}]
    table, _ = compute_leaderboard(one, cfg(), progress=False)
    assert list(table["model"]) == ["x", "y"]
    assert np.isfinite(table["rating"]).all() and table["rating"].iloc[0] < 2000
    assert list(table["votes"]) == [1, 1]

    empty, boot = compute_leaderboard([], cfg(), progress=False)
    assert empty.empty and list(empty.columns) == LEADERBOARD_COLUMNS and boot.empty
    assert "no votes yet" in leaderboard_markdown(empty)
    csv, md = write_leaderboard(empty, tmp_path)
    assert pd.read_csv(csv).empty and md.read_text().startswith("| Rank |")


def test_filters_and_bad_input():
    battles = [
        {"model_a": "a", "model_b": "b", "winner": "model_a", "anony": True, "tstamp": 1},
        {"model_a": "a", "model_b": "b", "winner": "tie (bothbad)", "anony": False, "tstamp": 2},
    ]
    assert len(battles_frame(battles, cfg(anony_only=True))) == 1
    assert len(battles_frame(battles, cfg(drop_bothbad=True))) == 1
    with pytest.raises(ValueError, match="unknown winner"):
        battles_frame([{"model_a": "a", "model_b": "b", "winner": "left", "tstamp": 1}])
    with pytest.raises(ValueError, match="rank_by"):
        compute_leaderboard(battles, cfg(rank_by="glicko"))
