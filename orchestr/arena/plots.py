"""Leaderboard plots as PNG (matplotlib, headless Agg backend): win fractions, battle counts,
ratings with their 95 % intervals."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def pairwise_win_fraction(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Row model's share of decisive wins against the column model (NaN where they never met)."""
    wins = pd.DataFrame(0.0, index=order, columns=order)
    games = pd.DataFrame(0.0, index=order, columns=order)
    for a, b, w in zip(df["model_a"], df["model_b"], df["winner"], strict=True):
        if w == "model_a":
            wins.loc[a, b] += 1
        elif w == "model_b":
            wins.loc[b, a] += 1
        if w in ("model_a", "model_b"):
            games.loc[a, b] += 1
            games.loc[b, a] += 1
    return wins / games.replace(0, np.nan)


def battle_counts(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    counts = pd.DataFrame(0, index=order, columns=order)
    for a, b in zip(df["model_a"], df["model_b"], strict=True):
        counts.loc[a, b] += 1
        if a != b:
            counts.loc[b, a] += 1
    return counts


def _heatmap(
    matrix: pd.DataFrame,
    title: str,
    fmt: str,
    path: Path,
    cmap: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(2 + 0.9 * n, 1.5 + 0.8 * n))
    im = ax.imshow(matrix.to_numpy(dtype=float), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(n), matrix.index)
    ax.set_xlabel("Model B")
    ax.set_ylabel("Model A")
    for i in range(n):
        for j in range(n):
            v = matrix.iat[i, j]
            if pd.notna(v):
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ratings_plot(table: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(2 + 0.8 * len(table), 4))
    x = np.arange(len(table))
    err = np.vstack([table["rating"] - table["ci_lower"], table["ci_upper"] - table["rating"]])
    ax.errorbar(x, table["rating"], yerr=np.clip(err, 0, None), fmt="o", capsize=4)
    for xi, r in zip(x, table["rating"], strict=True):
        ax.annotate(f"{r:.0f}", (xi, r), textcoords="offset points", xytext=(6, 0), fontsize=8)
    ax.set_xticks(x, table["model"], rotation=45, ha="right")
    ax.set_ylabel("Rating")
    ax.set_title("Rating, 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(df: pd.DataFrame, table: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """win_fraction.png, battle_count.png and rating_ci.png, models in leaderboard order."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    order = list(table["model"])
    return [
        _heatmap(pairwise_win_fraction(df, order), "Win fraction of A over B", ".2f",
                 out / "win_fraction.png", "RdBu", 0.0, 1.0),
        _heatmap(battle_counts(df, order), "Battles per pair", "d", out / "battle_count.png", "Blues"),
        ratings_plot(table, out / "rating_ci.png"),
    ]  # fmt: skip
