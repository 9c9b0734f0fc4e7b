"""The results step (FastChat's show_result): score and win-rate tables, CSV files, per-category plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from orchestr.eval import paths
from orchestr.eval.bench import load_questions
from orchestr.eval.errors import EvalError
from orchestr.eval.judge import judge_name_of, judgment_path
from orchestr.eval.records import read_jsonl


def single_table(records: list[dict], models: list[str] | None = None) -> pd.DataFrame:
    """Per model: mean score of turn 1, turn 2 and all turns (unparseable judgments, score -1, left out)."""
    df = pd.DataFrame(records, columns=["question_id", "model", "score", "turn"])
    df = df[df["score"] != -1]
    if models:
        df = df[df["model"].isin(models)]
    if df.empty:
        return pd.DataFrame(columns=["turn1", "turn2", "average", "judged"]).rename_axis("model")
    table = pd.DataFrame(
        {
            "turn1": df[df["turn"] == 1].groupby("model")["score"].mean(),
            "turn2": df[df["turn"] == 2].groupby("model")["score"].mean(),
            "average": df.groupby("model")["score"].mean(),
            "judged": df.groupby("model")["score"].count(),
        }
    )
    table.index.name = "model"
    return table.sort_values("average", ascending=False)


def pair_outcomes(records: list[dict], baseline: str | None = None, models: list[str] | None = None) -> pd.DataFrame:
    """One win/loss/tie row per model per judgment. A win needs both answer orders to agree;
    disagreement or an explicit tie is a tie for both; judgments with an error are left out."""
    rows = []
    for r in records:
        if "error" in (r["g1_winner"], r["g2_winner"]):
            continue
        m1, m2 = r["model_1"], r["model_2"]
        if baseline is not None and baseline not in (m1, m2):
            continue
        if models is not None and not ({m1, m2} - {baseline}) <= set(models):
            continue
        base = {"question_id": r["question_id"], "turn": r["turn"]}
        if r["g1_winner"] == "tie" or r["g1_winner"] != r["g2_winner"]:
            rows += [{**base, "model": m1, "win": 0, "loss": 0, "tie": 1}, {**base, "model": m2, "win": 0, "loss": 0, "tie": 1}]
        else:
            winner, loser = (m1, m2) if r["g1_winner"] == "model_1" else (m2, m1)
            rows += [{**base, "model": winner, "win": 1, "loss": 0, "tie": 0}, {**base, "model": loser, "win": 0, "loss": 1, "tie": 0}]
    return pd.DataFrame(rows, columns=["question_id", "turn", "model", "win", "loss", "tie"])


def pair_table(outcomes: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    if outcomes.empty:
        return pd.DataFrame(columns=["win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted"]).rename_axis("model")
    df = outcomes.groupby("model")[["win", "loss", "tie"]].sum()
    if baseline is not None:
        df = df[df.index != baseline]
    total = df["win"] + df["loss"] + df["tie"]
    df["win_rate"] = df["win"] / total
    df["loss_rate"] = df["loss"] / total
    df["win_rate_adjusted"] = (df["win"] + 0.5 * df["tie"]) / total  # a tie counts half a win
    return df.sort_values("win_rate_adjusted", ascending=False)


def _with_category(df: pd.DataFrame, questions: list[dict]) -> pd.DataFrame:
    cats = {str(q["question_id"]): q["category"] for q in questions}
    df = df.copy()
    df["category"] = df["question_id"].astype(str).map(cats).fillna("unknown")
    return df


def category_plot(per_category: pd.DataFrame, title: str, ylabel: str, path: Path) -> None:
    """Bar chart (category x model); a radar chart beside it when there are at least three categories."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    import numpy as np

    cats = list(per_category.index)
    radar = len(cats) >= 3
    fig = plt.figure(figsize=(14 if radar else 8, 5.5))
    ax = fig.add_subplot(1, 2 if radar else 1, 1)
    per_category.plot.bar(ax=ax, rot=30)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if radar:
        angles = np.linspace(0, 2 * np.pi, len(cats), endpoint=False).tolist()
        rax = fig.add_subplot(1, 2, 2, projection="polar")
        for model in per_category.columns:
            values = per_category[model].fillna(0).tolist()
            rax.plot(angles + angles[:1], values + values[:1], label=model)
            rax.fill(angles + angles[:1], values + values[:1], alpha=0.1)
        rax.set_xticks(angles)
        rax.set_xticklabels(cats)
        rax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _show(table: pd.DataFrame) -> str:
    return table.round(4).to_string() if not table.empty else "(no readable judgments to score)"


def run_results(cfg: Any) -> dict[str, Path]:
    """Print the tables for the configured judge and mode; write CSV (and PNG) files. Returns what it wrote."""
    j = cfg.judge
    src = judgment_path(cfg)
    records = read_jsonl(src)
    if not records:
        raise EvalError(f"no judgments in {src}: run `orchestr eval eval.step=judge judge.mode={j.mode}` first")
    out_dir = paths.results_dir(cfg.eval.data_dir, cfg.bench.name, cfg.eval.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{judge_name_of(cfg)}_{'single' if j.mode == 'single' else j.mode}"
    models = list(j.models) if j.models else None
    try:
        questions = load_questions(cfg.bench)
    except EvalError:
        questions = []  # categories are a bonus; the tables need only the judgments
    written: dict[str, Path] = {}
    pd.set_option("display.width", 200)
    bad = sum(1 for r in records if r.get("score") == -1 or "error" in (r.get("g1_winner"), r.get("g2_winner")))
    summary = f"{len(records)} judgments in {src}" + (f", {bad} unparseable (left out)" if bad else "")

    if j.mode == "single":
        table = single_table(records, models)
        print(f"\n########## {cfg.bench.name}: single-answer grading by {judge_name_of(cfg)} ##########")
        print(_show(table))
        per_cat_src = pd.DataFrame(records, columns=["question_id", "model", "score", "turn"])
        per_cat_src = per_cat_src[per_cat_src["score"] != -1]
        if models:
            per_cat_src = per_cat_src[per_cat_src["model"].isin(models)]
        per_cat = _with_category(per_cat_src, questions).pivot_table(index="category", columns="model", values="score", aggfunc="mean")
        value, ylabel = "score", "mean score (1-10)"
    else:
        baseline = j.baseline_model if j.mode == "pairwise-baseline" else None
        outcomes = pair_outcomes(records, baseline, models)
        table = pair_table(outcomes, baseline)
        against = f" vs {baseline}" if baseline else " (all pairs)"
        print(f"\n########## {cfg.bench.name}: pairwise{against} by {judge_name_of(cfg)} ##########")
        print(_show(table))
        with_cat = _with_category(outcomes, questions)
        if baseline is not None:
            with_cat = with_cat[with_cat["model"] != baseline]
        with_cat["adj"] = with_cat["win"] + 0.5 * with_cat["tie"]
        per_cat = with_cat.pivot_table(index="category", columns="model", values="adj", aggfunc="mean")
        value, ylabel = "win_rate_adjusted", "adjusted win rate"

    print(summary)
    written["table"] = out_dir / f"{stem}.csv"
    table.to_csv(written["table"])
    written["categories"] = out_dir / f"{stem}_by_category.csv"
    per_cat.to_csv(written["categories"])
    if cfg.eval.plot and not per_cat.empty:
        written["plot"] = out_dir / f"{stem}_by_category.png"
        category_plot(per_cat, f"{cfg.bench.name}: {value} by category", ylabel, written["plot"])
    print("written: " + ", ".join(str(p) for p in written.values()))
    return written
