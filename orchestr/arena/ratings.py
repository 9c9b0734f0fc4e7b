"""Ratings from battles: online Elo, Bradley-Terry by maximum likelihood, bootstrap CIs, leaderboard.

Both ratings live on the Elo scale: P(a beats b) = 1 / (1 + base ** ((R_b - R_a) / scale)).
Bradley-Terry is fitted with scipy's Newton-CG on the counts of each distinct (a, b, outcome); a tie
counts as half a win for each side (FastChat's convention). Its bootstrap redraws those counts
from a multinomial, i.e. resamples battles with replacement, `bootstrap_rounds` times.

`leaderboard_from_logs(log_dir)` is what the web UI's leaderboard tab calls: the same defaults as
`orchestr clean`, so the tab and the CLI's files show the same numbers.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from tqdm import tqdm

LEADERBOARD_COLUMNS = [
    "rank", "rank_point", "model", "rating", "ci_lower", "ci_upper", "ci_95", "votes", "bt_rating", "elo_rating",
]  # fmt: skip
SCORE = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


def battles_frame(
    battles: Sequence[dict[str, Any]] | pd.DataFrame, ratings_cfg: Any | None = None
) -> pd.DataFrame:
    """model_a, model_b, winner (and tstamp) of the battles the rating counts, oldest first."""
    df = pd.DataFrame(battles) if not isinstance(battles, pd.DataFrame) else battles.copy()
    if df.empty:
        return pd.DataFrame(columns=["model_a", "model_b", "winner", "tstamp"])
    unknown = set(df["winner"]) - set(SCORE)
    if unknown:
        raise ValueError(f"battles carry unknown winner values {sorted(unknown)}; expected {list(SCORE)}")
    if ratings_cfg is not None:
        if ratings_cfg.anony_only and "anony" in df:  # FastChat rates anonymous battles only
            df = df[df["anony"].astype(bool)]
        if ratings_cfg.drop_bothbad:
            df = df[df["winner"] != "tie (bothbad)"]
    if "tstamp" in df:
        df = df.sort_values("tstamp", kind="stable")
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------- online Elo


def online_elo(
    df: pd.DataFrame, k: float = 4.0, scale: float = 400.0, base: float = 10.0, init_rating: float = 1000.0
) -> pd.Series:
    """Classic sequential Elo over the battles in their order (depends on that order)."""
    rating: dict[str, float] = {}
    for a, b, w in zip(df["model_a"], df["model_b"], df["winner"], strict=True):
        ra, rb = rating.setdefault(a, init_rating), rating.setdefault(b, init_rating)
        ea = 1.0 / (1.0 + base ** ((rb - ra) / scale))
        sa = SCORE[w]
        rating[a] = ra + k * (sa - ea)
        rating[b] = rating[b] + k * ((1.0 - sa) - (1.0 - ea))
    return pd.Series(rating, dtype=float).sort_values(ascending=False)


# --------------------------------------------------------------------------- Bradley-Terry


def _matchups(df: pd.DataFrame, models: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (a index, b index, score) rows and how often each occurred."""
    idx = {m: i for i, m in enumerate(models)}
    rows = np.column_stack(
        [
            df["model_a"].map(idx).to_numpy(np.int64),
            df["model_b"].map(idx).to_numpy(np.int64),
            (df["winner"].map(SCORE).to_numpy(np.float64) * 2).astype(np.int64),
        ]
    )
    uniq, counts = np.unique(rows, axis=0, return_counts=True)
    return uniq[:, :2], uniq[:, 2] / 2.0, counts.astype(np.float64)


def _bt_loss(x: np.ndarray, pairs: np.ndarray, scores: np.ndarray, weights: np.ndarray, l2: float):
    logits = x[pairs[:, 0]] - x[pairs[:, 1]]
    loss = -(weights * (scores * log_expit(logits) + (1 - scores) * log_expit(-logits))).sum()
    g_pair = -weights * (scores - expit(logits))
    grad = np.bincount(pairs[:, 0], g_pair, len(x)) - np.bincount(pairs[:, 1], g_pair, len(x))
    return loss + 0.5 * l2 * (x @ x), grad + l2 * x


def _bt_hess(x: np.ndarray, pairs: np.ndarray, scores: np.ndarray, weights: np.ndarray, l2: float):
    n = len(x)
    p = expit(x[pairs[:, 0]] - x[pairs[:, 1]])
    v = weights * p * (1 - p)
    a, b = pairs[:, 0], pairs[:, 1]
    # Each (a, b) row adds v to H[a,a] and H[b,b] and -v to H[a,b] and H[b,a].
    flat = np.concatenate([a * n + a, b * n + b, a * n + b, b * n + a])
    vals = np.concatenate([v, v, -v, -v])
    return np.bincount(flat, vals, n * n).reshape(n, n) + l2 * np.eye(n)


def fit_bt(
    pairs: np.ndarray, scores: np.ndarray, weights: np.ndarray, n_models: int, l2: float
) -> np.ndarray:
    """Maximum-likelihood strengths in logit units, centred at 0. The log-likelihood is concave,
    so scipy's Newton-CG with the exact Hessian converges in a handful of steps."""
    res = minimize(
        _bt_loss,
        np.zeros(n_models),
        args=(pairs, scores, weights, l2),
        jac=True,
        hess=_bt_hess,
        method="Newton-CG",
        options={"maxiter": 200, "xtol": 1e-10},
    )
    return res.x - res.x.mean()


def _to_scale(x: np.ndarray, models: list[str], cfg: Any) -> np.ndarray:
    ratings = x * cfg.scale / math.log(cfg.base) + cfg.init_rating
    if cfg.baseline_model and cfg.baseline_model in models:
        i = models.index(cfg.baseline_model)
        ratings = ratings + (cfg.baseline_rating - ratings[..., [i]])
    return ratings


def _models(df: pd.DataFrame) -> list[str]:
    return sorted(set(df["model_a"]) | set(df["model_b"]))


def bt_ratings(df: pd.DataFrame, cfg: Any) -> pd.Series:
    models = _models(df)
    pairs, scores, weights = _matchups(df, models)
    x = fit_bt(pairs, scores, weights, len(models), cfg.bt_l2)
    return pd.Series(_to_scale(x, models, cfg), index=models).sort_values(ascending=False)


def bootstrap_bt(df: pd.DataFrame, cfg: Any, progress: bool = True) -> pd.DataFrame:
    """One row per bootstrap round, one column per model (Elo-scale BT ratings)."""
    models = _models(df)
    pairs, scores, weights = _matchups(df, models)
    rng = np.random.default_rng(cfg.seed)
    draws = rng.multinomial(int(weights.sum()), weights / weights.sum(), size=cfg.bootstrap_rounds)
    rows = [
        fit_bt(pairs, scores, w.astype(np.float64), len(models), cfg.bt_l2)
        for w in tqdm(draws, desc="bootstrap BT", disable=not progress or cfg.bootstrap_rounds < 50)
    ]
    return pd.DataFrame(_to_scale(np.array(rows).reshape(-1, len(models)), models, cfg), columns=models)


def bootstrap_elo(df: pd.DataFrame, cfg: Any, progress: bool = True) -> pd.DataFrame:
    """Online Elo over battles resampled with replacement (random order), per round."""
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for _ in tqdm(
        range(cfg.bootstrap_rounds), desc="bootstrap Elo", disable=not progress or cfg.bootstrap_rounds < 50
    ):
        sample = df.iloc[rng.integers(0, len(df), len(df))]
        rows.append(online_elo(sample, cfg.elo_k, cfg.scale, cfg.base, cfg.init_rating))
    return pd.DataFrame(rows).reindex(columns=_models(df))


# --------------------------------------------------------------------------- style control


def _style_loss(params, n, a, b, feats, outcomes, reg):
    x, beta = params[:n], params[n:]
    logits = x[a] - x[b] + feats @ beta
    loss = -(outcomes * log_expit(logits) + (1 - outcomes) * log_expit(-logits)).sum()
    err = outcomes - expit(logits)
    grad = np.concatenate([np.bincount(b, err, n) - np.bincount(a, err, n), -(feats.T @ err)])
    return loss + 0.5 * (reg * params) @ params, grad + reg * params


def fit_style_bt(a: np.ndarray, b: np.ndarray, feats: np.ndarray, outcomes: np.ndarray, n: int, l2: float,
                 base: float = 10.0):  # fmt: skip
    """Contextual Bradley-Terry (FastChat's style control): strengths (natural-log units) and style
    coefficients, by L-BFGS on one row per battle (features differ per battle, so rows cannot be
    pooled). The ridge `l2` weighs the strengths in log-`base` units, as FastChat's fit does."""
    reg = np.concatenate([np.full(n, l2 / math.log(base) ** 2), np.full(feats.shape[1], l2)])
    res = minimize(_style_loss, np.zeros(n + feats.shape[1]), args=(n, a, b, feats, outcomes, reg),
                   jac=True, method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-8})  # fmt: skip
    x = res.x[:n]
    return x - x.mean(), res.x[n:]


def _style_inputs(df: pd.DataFrame, models: list[str]):
    from orchestr.arena.style import conv_metadata, style_features

    if "conv_metadata" in df:
        meta = list(df["conv_metadata"])
    elif "conversation_a" in df:
        meta = [conv_metadata(ca, cb) for ca, cb in zip(df["conversation_a"], df["conversation_b"], strict=True)]
    else:
        raise ValueError(
            "clean.ratings.style_control needs the answers' style: battles with `conv_metadata` or "
            "conversations (re-run the battles step with this orchestr)"
        )
    if any(not isinstance(m, dict) for m in meta):
        raise ValueError("clean.ratings.style_control: some battles lack `conv_metadata`")
    idx = {m: i for i, m in enumerate(models)}
    a = df["model_a"].map(idx).to_numpy(np.int64)
    b = df["model_b"].map(idx).to_numpy(np.int64)
    return a, b, style_features(meta), df["winner"].map(SCORE).to_numpy(np.float64)


def style_bt_ratings(df: pd.DataFrame, cfg: Any) -> tuple[pd.Series, pd.Series]:
    """(style-controlled ratings, style coefficients by feature name)."""
    from orchestr.arena.style import FEATURE_NAMES

    models = _models(df)
    a, b, feats, y = _style_inputs(df, models)
    x, beta = fit_style_bt(a, b, feats, y, len(models), cfg.style_l2, cfg.base)
    return (pd.Series(_to_scale(x, models, cfg), index=models).sort_values(ascending=False),
            pd.Series(beta, index=FEATURE_NAMES))  # fmt: skip


def bootstrap_style_bt(df: pd.DataFrame, cfg: Any, progress: bool = True) -> pd.DataFrame:
    models = _models(df)
    a, b, feats, y = _style_inputs(df, models)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for _ in tqdm(range(cfg.bootstrap_rounds), desc="bootstrap style BT",
                  disable=not progress or cfg.bootstrap_rounds < 50):  # fmt: skip
        i = rng.integers(0, len(y), len(y))
        rows.append(fit_style_bt(a[i], b[i], feats[i], y[i], len(models), cfg.style_l2, cfg.base)[0])
    return pd.DataFrame(_to_scale(np.array(rows).reshape(-1, len(models)), models, cfg), columns=models)


# --------------------------------------------------------------------------- ranks


def ci_rank(lower: pd.Series, upper: pd.Series) -> pd.Series:
    """LMArena's rank: 1 + the number of models whose whole interval lies above this model's.
    Models whose intervals overlap can share a rank."""
    return pd.Series([1 + int((lower > u).sum()) for u in upper], index=upper.index)


def point_rank(ratings: pd.Series, decimals: int = 1) -> pd.Series:
    """Rank by rating; equal (displayed) ratings share the better rank (1, 1, 3)."""
    return ratings.round(decimals).rank(method="min", ascending=False).astype(int)


# --------------------------------------------------------------------------- leaderboard


def empty_leaderboard() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in LEADERBOARD_COLUMNS})


def compute_leaderboard(
    battles: Sequence[dict[str, Any]] | pd.DataFrame, cfg: Any, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(leaderboard table, bootstrap samples of the ranked rating). Empty frames when no battles."""
    if cfg.rank_by not in ("bt", "elo"):
        raise ValueError(f"clean.ratings.rank_by={cfg.rank_by!r}: expected bt or elo")
    if cfg.bootstrap_rounds < 1:
        raise ValueError("clean.ratings.bootstrap_rounds must be at least 1")
    df = battles_frame(battles, cfg)
    if df.empty:
        return empty_leaderboard(), pd.DataFrame()
    bt = bt_ratings(df, cfg)
    elo = online_elo(df, cfg.elo_k, cfg.scale, cfg.base, cfg.init_rating)
    if getattr(cfg, "style_control", False):
        if cfg.rank_by != "bt":
            raise ValueError("clean.ratings.style_control needs clean.ratings.rank_by=bt")
        point, _ = style_bt_ratings(df, cfg)
        boot = bootstrap_style_bt(df, cfg, progress)
    else:
        boot = bootstrap_bt(df, cfg, progress) if cfg.rank_by == "bt" else bootstrap_elo(df, cfg, progress)
        point = bt if cfg.rank_by == "bt" else elo
    votes = pd.concat([df["model_a"], df["model_b"]]).value_counts()
    lower, upper = boot.quantile(0.025), boot.quantile(0.975)
    table = pd.DataFrame(
        {
            "model": point.index,
            "rating": point.to_numpy(),
            "ci_lower": lower.reindex(point.index).to_numpy(),
            "ci_upper": upper.reindex(point.index).to_numpy(),
            "votes": votes.reindex(point.index).fillna(0).astype(int).to_numpy(),
            "bt_rating": bt.reindex(point.index).to_numpy(),
            "elo_rating": elo.reindex(point.index).to_numpy(),
        }
    ).sort_values("rating", ascending=False, kind="stable")
    table.insert(0, "rank", ci_rank(table["ci_lower"], table["ci_upper"]).to_numpy())
    table.insert(1, "rank_point", point_rank(table["rating"]).to_numpy())
    table["ci_95"] = [
        f"+{u - r:.0f}/-{r - lo:.0f}"
        for r, lo, u in zip(table["rating"], table["ci_lower"], table["ci_upper"], strict=True)
    ]
    for col in ("rating", "ci_lower", "ci_upper", "bt_rating", "elo_rating"):
        table[col] = table[col].round(1)
    return table[LEADERBOARD_COLUMNS].reset_index(drop=True), boot


CATEGORIES = ("language", "turns", "long_user")


def category_frames(df: pd.DataFrame, cfg: Any) -> dict[str, pd.DataFrame]:
    """Battle subsets of the per-category leaderboards, by name (`language=English`, `turns=multi`,
    `long_user`), each with at least `category_min_battles` battles."""
    from orchestr.arena.style import conv_metadata

    unknown = set(cfg.categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"clean.ratings.categories: unknown {sorted(unknown)}; expected some of {list(CATEGORIES)}")
    meta = None
    if "conv_metadata" in df:
        meta = [m if isinstance(m, dict) else {} for m in df["conv_metadata"]]
    elif "conversation_a" in df:
        meta = [conv_metadata(a, b) for a, b in zip(df["conversation_a"], df["conversation_b"], strict=True)]
    subsets: dict[str, pd.Series] = {}
    if "language" in cfg.categories and "language" in df:
        for lang in df["language"].dropna().unique():
            subsets[f"language={lang}"] = df["language"] == lang
    if "turns" in cfg.categories and "turn" in df:
        subsets["turns=single"] = df["turn"] == 1
        subsets["turns=multi"] = df["turn"] > 1
    if "long_user" in cfg.categories and meta is not None:
        tokens = pd.Series([m.get("sum_user_tokens", 0) for m in meta], index=df.index)
        subsets["long_user"] = tokens >= cfg.long_user_tokens
    return {k: df[v].reset_index(drop=True) for k, v in subsets.items() if v.sum() >= cfg.category_min_battles}


def category_leaderboards(df: pd.DataFrame, cfg: Any, progress: bool = False) -> dict[str, pd.DataFrame]:
    return {name: compute_leaderboard(sub, cfg, progress)[0] for name, sub in category_frames(df, cfg).items()}


def leaderboard_markdown(table: pd.DataFrame) -> str:
    head = "| Rank | Model | Rating | 95% CI | Votes |\n| ---: | --- | ---: | :---: | ---: |\n"
    body = "".join(
        f"| {r.rank} | {r.model} | {r.rating:.0f} | {r.ci_95} | {r.votes} |\n" for r in table.itertuples()
    )
    return head + (body or "| | *no votes yet* | | | |\n")


def write_leaderboard(table: pd.DataFrame, out_dir: str | os.PathLike, name: str = "leaderboard") -> list[Path]:
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    table.to_csv(csv_path, index=False)
    md_path.write_text(leaderboard_markdown(table), encoding="utf-8")
    return [csv_path, md_path]


# --------------------------------------------------------------------------- for the web UI

_cache: dict[Any, tuple[pd.DataFrame, pd.DataFrame]] = {}
_cache_lock = threading.Lock()


def leaderboard_from_logs(
    log_dir: str | os.PathLike | Sequence[str | os.PathLike],
    battles_cfg: Any | None = None,
    ratings_cfg: Any | None = None,
) -> pd.DataFrame:
    """Leaderboard (LEADERBOARD_COLUMNS) from the web UI's day files; an empty frame when there
    are no votes (or no folder yet). Cached until a log file changes."""
    return rated_battles_from_logs(log_dir, battles_cfg, ratings_cfg)[0]


def rated_battles_from_logs(
    log_dir: str | os.PathLike | Sequence[str | os.PathLike],
    battles_cfg: Any | None = None,
    ratings_cfg: Any | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(leaderboard, the battles it rated) from the day files; cached until a log file changes."""
    from orchestr.arena.battles import clean_battles
    from orchestr.arena.logs import find_log_files
    from orchestr.config.clean import BattlesConfig, RatingsConfig

    battles_cfg = battles_cfg or BattlesConfig()
    ratings_cfg = ratings_cfg or RatingsConfig()
    dirs = [log_dir] if isinstance(log_dir, (str, os.PathLike)) else list(log_dir)
    dirs = [str(Path(d).expanduser()) for d in dirs if Path(d).expanduser().is_dir()]
    if not dirs:
        return empty_leaderboard(), battles_frame([])
    files = find_log_files(dirs, battles_cfg.start_date, battles_cfg.end_date, battles_cfg.max_num_files)
    key = (
        tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files),
        repr(battles_cfg),
        repr(ratings_cfg),
    )
    with _cache_lock:
        if key in _cache:
            table, df = _cache[key]
            return table.copy(), df.copy()
    battles, _ = clean_battles(battles_cfg, dirs)
    table, _ = compute_leaderboard(battles, ratings_cfg, progress=False)
    df = battles_frame(battles, ratings_cfg)
    with _cache_lock:
        _cache.clear()  # only the newest logs matter
        _cache[key] = (table, df)
    return table.copy(), df.copy()
