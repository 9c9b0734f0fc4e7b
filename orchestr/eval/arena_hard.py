"""arena-hard-auto's results: win rates against the baseline from five-label verdicts, bootstrap
intervals, position-flip rate, style-controlled and length-controlled win rates, per category.

Scoring (arena-hard-auto's show_result): each record holds two games, game 1 with the baseline as
assistant A and game 2 with the judged model as A. A verdict becomes the model's score: win 1,
tie 0.5, loss 0; a strong verdict (`A>>B`, `B>>A`) counts `strong_weight` times (3). The win rate is
the mean score; its interval comes from resampling the model's scores with replacement
(`bootstrap_rounds` times) and taking the central `ci` share of the resampled means.

Length-controlled win rate (AlpacaEval 2): a logistic model of each score on the model's strength
and tanh(length difference / its standard deviation); the LC win rate is the predicted win rate at
zero length difference. Style control does the same with FastChat's four style features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from orchestr.arena.style import conv_metadata, style_features

# Score of assistant A for each label, and whether it is a strong verdict.
_A_SCORE = {"A>>B": (1.0, True), "A>B": (1.0, False), "A=B": (0.5, False), "B>A": (0.0, False), "B>>A": (0.0, True)}


def game_scores(record: dict, weight: int) -> list[float] | None:
    """The judged model's scores from both games (strong verdicts repeated), or None if unparsed."""
    g1, g2 = record["games"][0]["score"], record["games"][1]["score"]
    if g1 not in _A_SCORE or g2 not in _A_SCORE:
        return None
    s1, strong1 = _A_SCORE[g1]
    s2, strong2 = _A_SCORE[g2]
    # game 1: the baseline is A, so the model scores 1 - A's score; game 2: the model is A
    return [1.0 - s1] * (weight if strong1 else 1) + [s2] * (weight if strong2 else 1)


def _side(score: float) -> int:
    return 1 if score > 0.5 else -1 if score < 0.5 else 0


def flip_rate(records: list[dict]) -> float:
    """Share of parsed records whose two games disagree on who won (win / tie / loss from the
    model's side): the judge's position bias, printed with every run."""
    n = flips = 0
    for r in records:
        g1, g2 = r["games"][0]["score"], r["games"][1]["score"]
        if g1 in _A_SCORE and g2 in _A_SCORE:
            n += 1
            flips += _side(1.0 - _A_SCORE[g1][0]) != _side(_A_SCORE[g2][0])
    return flips / n if n else float("nan")


def battles_frame(records: list[dict], weight: int) -> pd.DataFrame:
    rows = []
    for r in records:
        scores = game_scores(r, weight)
        if scores is None:
            continue
        for s in scores:
            rows.append({"question_id": r["question_id"], "category": r.get("category", "general"),
                         "model": r["model"], "baseline": r["baseline"], "score": s})  # fmt: skip
    return pd.DataFrame(rows, columns=["question_id", "category", "model", "baseline", "score"])


def bootstrap_win_rates(battles: pd.DataFrame, rounds: int, ci: float, seed: int) -> pd.DataFrame:
    """Per model: win_rate (mean score), ci_lower, ci_upper (bootstrap of the mean), games."""
    rng = np.random.default_rng(seed)
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    rows = []
    for model, g in battles.groupby("model", sort=True):
        s = g["score"].to_numpy(np.float64)
        means = s[rng.integers(0, len(s), (rounds, len(s)))].mean(axis=1)
        rows.append({"model": model, "win_rate": s.mean(), "ci_lower": np.quantile(means, lo_q),
                     "ci_upper": np.quantile(means, hi_q), "games": len(s)})  # fmt: skip
    return pd.DataFrame(rows, columns=["model", "win_rate", "ci_lower", "ci_upper", "games"]).set_index("model")


def _fit_controlled(y: np.ndarray, x: np.ndarray, l2: float = 1e-3) -> float:
    """Logistic regression of scores y on an intercept and the columns of x; returns expit(intercept)."""

    def loss(p: np.ndarray):
        logits = p[0] + x @ p[1:]
        val = -(y * log_expit(logits) + (1 - y) * log_expit(-logits)).sum() + 0.5 * l2 * (p[1:] @ p[1:])
        err = y - expit(logits)
        return val, np.concatenate([[-err.sum()], -(x.T @ err) + l2 * p[1:]])

    res = minimize(loss, np.zeros(1 + x.shape[1]), jac=True, method="L-BFGS-B")
    return float(expit(res.x[0]))


def controlled_win_rates(records: list[dict], answers: dict, weight: int) -> pd.DataFrame:
    """Per model: length-controlled (AlpacaEval 2) and style-controlled win rates against the baseline."""
    rows: dict[str, dict[str, list]] = {}
    for r in records:
        scores = game_scores(r, weight)
        if scores is None:
            continue
        try:
            a_model = answers[r["model"]][r["question_id"]]["choices"][0]["turns"][0]
            a_base = answers[r["baseline"]][r["question_id"]]["choices"][0]["turns"][0]
        except (KeyError, IndexError):
            continue
        meta = conv_metadata([{"role": "assistant", "content": a_model}], [{"role": "assistant", "content": a_base}])
        d = rows.setdefault(r["model"], {"y": [], "meta": []})
        d["y"] += scores
        d["meta"] += [meta] * len(scores)
    out = []
    for model, d in sorted(rows.items()):
        y = np.array(d["y"])
        len_diff = np.array([m["sum_assistant_a_tokens"] - m["sum_assistant_b_tokens"] for m in d["meta"]], float)
        std = len_diff.std() or 1.0
        lc = _fit_controlled(y, np.tanh(len_diff / std)[:, None])
        sc = _fit_controlled(y, style_features(d["meta"]))
        out.append({"model": model, "lc_win_rate": lc, "style_win_rate": sc})
    return pd.DataFrame(out, columns=["model", "lc_win_rate", "style_win_rate"]).set_index("model")


def arena_hard_table(records: list[dict], answers: dict, cfg: Any) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """(table per model, table per category x model, position-flip rate)."""
    j = cfg.judge
    battles = battles_frame(records, j.strong_weight)
    if battles.empty:
        empty = pd.DataFrame(columns=["win_rate", "ci_lower", "ci_upper", "games", "lc_win_rate", "style_win_rate"])
        return empty.rename_axis("model"), pd.DataFrame(), flip_rate(records)
    table = bootstrap_win_rates(battles, j.bootstrap_rounds, j.ci, j.seed)
    table = table.join(controlled_win_rates(records, answers, j.strong_weight))
    per_cat = battles.pivot_table(index="category", columns="model", values="score", aggfunc="mean")
    return table.sort_values("win_rate", ascending=False), per_cat, flip_rate(records)
