"""The results step (FastChat's show_result, arena-hard-auto's show_result): score and win-rate
tables, CSV files, per-category plots, and which matches have no judgment yet.

Records are read as FastChat writes them: pair records without `turn` take it from their prompt name,
and a match judged twice (a pair file holding (a, b) and (b, a), say) counts once, the latest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from orchestr.eval import paths
from orchestr.eval.bench import load_questions
from orchestr.eval.errors import EvalError
from orchestr.eval.judge import judge_model_of, judge_name_of, judgment_path, key_function
from orchestr.eval.matches import record_turn
from orchestr.eval.records import read_jsonl


def single_table(records: list[dict], models: list[str] | None = None) -> pd.DataFrame:
    """Per model: mean score of turn 1, turn 2 and all turns (unparseable judgments, score -1, left out)."""
    df = pd.DataFrame([{**r, "turn": record_turn(r)} for r in records], columns=["question_id", "model", "score", "turn"])
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
        if "g1_winner" not in r or "error" in (r["g1_winner"], r["g2_winner"]):
            continue
        m1, m2 = r["model_1"], r["model_2"]
        if baseline is not None and baseline not in (m1, m2):
            continue
        if models is not None and not ({m1, m2} - {baseline}) <= set(models):
            continue
        base = {"question_id": r["question_id"], "turn": record_turn(r)}
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


def latest_per_match(records: list[dict], mode: str) -> list[dict]:
    """One record per match (the last one written), whichever order a pair was written in."""
    key_of = key_function(mode)
    by_key: dict[tuple, dict] = {}
    for r in records:
        by_key[key_of(r)] = r
    return list(by_key.values())


def missing_matches(cfg: Any, records: list[dict]) -> tuple[int, list[tuple]] | None:
    """(how many matches the judge step would make, those without a judgment), or None when the
    questions or answers are not at hand to tell."""
    from orchestr.eval.bench import load_answers, load_judge_prompts, load_references
    from orchestr.eval.matches import build_matches

    j = cfg.judge
    try:
        questions = load_questions(cfg.bench)[: j.first_n] if j.first_n else load_questions(cfg.bench)
        answers = load_answers(paths.answer_dir(cfg.eval.data_dir, cfg.bench.name))
        models = list(j.models) if j.models else sorted(answers)
        if not answers or any(m not in answers for m in models):
            return None
        if j.mode in ("pairwise-baseline", "arena-hard") and j.baseline_model not in answers:
            return None
        prompts = load_judge_prompts(cfg.bench.judge_prompt_file)
        matches = build_matches(cfg, questions, answers, load_references(cfg.bench, questions), prompts, models)
    except EvalError:
        return None
    key_of = key_function(j.mode)
    have = {key_of(r) for r in records}
    return len(matches), [m.key for m in matches if m.key not in have]


def _show(table: pd.DataFrame) -> str:
    return table.round(4).to_string() if not table.empty else "(no readable judgments to score)"


def run_results(cfg: Any) -> dict[str, Path]:
    """Print the tables for the configured judge and mode; write CSV (and PNG) files. Returns what it wrote."""
    j = cfg.judge
    src = judgment_path(cfg)
    raw = read_jsonl(src)
    if not raw:
        raise EvalError(f"no judgments in {src}: run `orchestr eval eval.step=judge judge.mode={j.mode}` first")
    records = latest_per_match(raw, j.mode)
    out_dir = paths.results_dir(cfg.eval.data_dir, cfg.bench.name, cfg.eval.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{judge_name_of(cfg)}_{j.mode}"
    models = list(j.models) if j.models else None
    try:
        questions = load_questions(cfg.bench)
    except EvalError:
        questions = []  # categories are a bonus; the tables need only the judgments
    written: dict[str, Path] = {}
    pd.set_option("display.width", 200)
    from orchestr.eval.judge import is_unparseable

    bad = sum(1 for r in records if is_unparseable(r))
    summary = f"{len(records)} judgments in {src}" + (f", {bad} unparseable (left out)" if bad else "")
    if len(raw) > len(records):
        summary += f"; {len(raw) - len(records)} repeated judgment(s) of the same match counted once (the latest)"
    gaps = missing_matches(cfg, [r for r in records if list(r.get("judge", []))[:1] == [judge_model_of(cfg)]])
    if gaps is not None and gaps[1]:
        total, missing = gaps
        shown = "; ".join(f"question {k[0]} turn {k[2]} {' vs '.join(k[1])}" for k in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        summary += (f"\nINCOMPLETE: {len(missing)} of {total} matches have no judgment ({shown}{more}); "
                    f"run `orchestr eval eval.step=judge judge.mode={j.mode}` to fill them")

    if j.mode == "arena-hard":
        from orchestr.eval.arena_hard import arena_hard_table
        from orchestr.eval.bench import load_answers

        answers = load_answers(paths.answer_dir(cfg.eval.data_dir, cfg.bench.name))
        table, per_cat, flips = arena_hard_table(records, answers, cfg)
        if models:
            table = table[table.index.isin(models)]
        print(f"\n########## {cfg.bench.name}: arena-hard vs {j.baseline_model} by {judge_name_of(cfg)} "
              f"({int(j.ci * 100)}% bootstrap CI, '>>' weighted {j.strong_weight}x) ##########")
        print(_show(table))
        print(f"position-flip rate: {flips:.1%} of judged pairs change winner when the answers swap places")
        value, ylabel = "win_rate", "win rate vs baseline"
    elif j.mode == "single":
        table = single_table(records, models)
        print(f"\n########## {cfg.bench.name}: single-answer grading by {judge_name_of(cfg)} ##########")
        print(_show(table))
        per_cat_src = pd.DataFrame([{**r, "turn": record_turn(r)} for r in records],
                                   columns=["question_id", "model", "score", "turn"])
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
