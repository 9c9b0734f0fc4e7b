"""Style control, ranks with ties and CI-aware ranks, category leaderboards, the anonymous-only
default: on battles drawn from a known process, so the right answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestr.arena.ratings import category_leaderboards, ci_rank, compute_leaderboard, point_rank
from orchestr.arena.style import conv_metadata, markdown_counts, style_features
from orchestr.config.clean import RatingsConfig


def verbose_battles(n: int = 3000, seed: int = 0) -> list[dict]:
    """Three equally strong models; `verbose` writes longer answers and the voter prefers the longer
    answer, so it wins more votes without being any better."""
    rng = np.random.default_rng(seed)
    lengths = {"verbose": (300, 1000), "plain": (50, 600), "terse": (50, 600)}
    models = list(lengths)
    out = []
    for i in range(n):
        a, b = rng.choice(models, 2, replace=False)
        la, lb = (int(rng.integers(*lengths[m])) for m in (a, b))
        p_a = 1 / (1 + np.exp(-3.0 * (la - lb) / (la + lb + 1)))
        winner = "model_a" if rng.random() < p_a else "model_b"
        meta = {"sum_assistant_a_tokens": la, "sum_assistant_b_tokens": lb, "sum_user_tokens": 10, "turns": 1,
                "header_count_a": {"h1": 0}, "header_count_b": {"h1": 0}, "list_count_a": {"ordered": 0},
                "list_count_b": {"ordered": 0}, "bold_count_a": {"**": 0}, "bold_count_b": {"**": 0}}
        out.append({"model_a": a, "model_b": b, "winner": winner, "anony": True, "tstamp": i, "turn": 1,
                    "language": "English", "conv_metadata": meta})
    return out


def test_style_control_moves_a_model_that_wins_by_length_down():
    battles = verbose_battles()
    plain, _ = compute_leaderboard(battles, RatingsConfig(bootstrap_rounds=20), progress=False)
    styled, boot = compute_leaderboard(battles, RatingsConfig(bootstrap_rounds=20, style_control=True),
                                       progress=False)
    r_plain = plain.set_index("model")["rating"]
    r_style = styled.set_index("model")["rating"]
    assert plain["model"].iloc[0] == "verbose" and r_plain["verbose"] - r_plain["plain"] > 40
    # Net of length the three are equally strong: verbose drops to the pack, within bootstrap noise.
    assert r_style["verbose"] < r_plain["verbose"] - 30
    spread = boot.std().max()
    assert abs(r_style["verbose"] - r_style["plain"]) < 3 * spread + 5
    assert set(styled["rank"]) == {1}  # overlapping intervals: everyone shares rank 1


def test_ranks_share_on_ties_and_on_overlapping_intervals():
    assert list(point_rank(pd.Series([1100.04, 1100.0, 1050.0]))) == [1, 1, 3]
    lower = pd.Series([1090, 1080, 1000, 900.0])
    upper = pd.Series([1110, 1100, 1020, 950.0])
    # m2's interval lies below m0's and m1's; m3's below all three.
    assert list(ci_rank(lower, upper)) == [1, 1, 3, 4]
    # Two models that always tie get identical ratings and share rank 1.
    battles = [{"model_a": "x", "model_b": "y", "winner": "tie", "anony": True, "tstamp": i} for i in range(20)]
    table, _ = compute_leaderboard(battles, RatingsConfig(bootstrap_rounds=5), progress=False)
    assert list(table["rank"]) == [1, 1] and list(table["rank_point"]) == [1, 1]


def test_named_votes_are_left_out_by_default_and_counted_on_request():
    battles = verbose_battles(200)
    for b in battles[:50]:
        b["anony"] = False
    default, _ = compute_leaderboard(battles, RatingsConfig(bootstrap_rounds=2), progress=False)
    everything, _ = compute_leaderboard(battles, RatingsConfig(bootstrap_rounds=2, anony_only=False),
                                        progress=False)
    assert default["votes"].sum() == 2 * 150 and everything["votes"].sum() == 2 * 200


def test_category_leaderboards_by_language_turns_and_long_prompts():
    battles = verbose_battles(400)
    for i, b in enumerate(battles):
        b["language"] = "English" if i % 2 else "German"
        b["turn"] = 1 + (i % 4 == 0)
        b["conv_metadata"]["sum_user_tokens"] = 600 if i < 100 else 10
    cfg = RatingsConfig(bootstrap_rounds=2, category_min_battles=60)
    boards = category_leaderboards(pd.DataFrame(battles), cfg)
    assert set(boards) == {"language=English", "language=German", "turns=single", "turns=multi", "long_user"}
    assert boards["long_user"]["votes"].sum() == 2 * 100
    assert boards["turns=multi"]["votes"].sum() == 2 * 100


def test_style_features_follow_fastchats_definition():
    md = markdown_counts("# T\n## S\n- a\n* b\n1. c\n**x** and __y__\n```\n# not a header\n```")
    assert md["header_count"]["h1"] == 1 and md["header_count"]["h2"] == 1
    assert md["list_count"] == {"ordered": 1, "unordered": 2}
    assert md["bold_count"] == {"**": 1, "__": 1}
    meta = conv_metadata([{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "a b c"}],
                         [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "a"}])
    assert meta["sum_assistant_a_tokens"] == 3 and meta["sum_assistant_b_tokens"] == 1
    assert meta["sum_user_tokens"] == 2 and meta["turns"] == 1
    f = style_features([meta, {**meta, "sum_assistant_a_tokens": 1, "sum_assistant_b_tokens": 3}])
    # (3-1)/(3+1+1) and its mirror, standardised: +1 and -1; unused elements stay 0
    assert np.allclose(f[:, 0], [1, -1]) and np.allclose(f[:, 1:], 0)
