"""The steps of `orchestr clean`, by name, wired to their input and output files.

Every step takes the composed `clean` config node and returns its StepReport (printed by the
caller). A pipeline (`clean.pipelines`) is a list of step names run in order; the default file
paths chain each step's output to the next step's input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydra.utils import get_method

from orchestr.arena.records import StepReport, read_records, write_records


def step_battles(clean: Any) -> StepReport:
    from orchestr.arena.battles import battle_summary, clean_battles

    battles, report = clean_battles(clean.battles)
    report.outputs.append(str(write_records(clean.battles.output, battles)))
    print(f"[battles] {battle_summary(battles)}")
    return report


def step_ratings(clean: Any) -> StepReport:
    from orchestr.arena.ratings import (
        battles_frame,
        category_leaderboards,
        compute_leaderboard,
        leaderboard_markdown,
        style_bt_ratings,
        write_leaderboard,
    )

    cfg = clean.ratings
    battles = read_records(cfg.input)
    report = StepReport("ratings", read=len(battles))
    table, _ = compute_leaderboard(battles, cfg)
    df = battles_frame(battles, cfg)
    report.kept = len(df)
    if len(battles) > len(df):
        report.drop("ratings_filters", len(battles) - len(df))
    paths = write_leaderboard(table, cfg.output_dir)
    if cfg.plots and not table.empty:
        from orchestr.arena.plots import write_plots

        paths += write_plots(df, table, cfg.output_dir)
    if cfg.style_control and not df.empty:
        coef = style_bt_ratings(df, cfg)[1]
        print("style coefficients (logit per standardised feature): "
              + ", ".join(f"{k} {v:+.3f}" for k, v in coef.items()))  # fmt: skip
    print(leaderboard_markdown(table), end="")
    if not df.empty:
        for name, sub in category_leaderboards(df, cfg).items():
            paths += write_leaderboard(sub, cfg.output_dir, "leaderboard_" + name.replace("=", "_"))
            print(f"\n{name}:\n" + leaderboard_markdown(sub), end="")
    report.outputs += [str(p) for p in paths]
    return report


def step_chats(clean: Any) -> StepReport:
    from orchestr.arena.release.chats import gather_chats

    chats, report = gather_chats(clean.chats)
    report.outputs.append(str(write_records(clean.chats.output, chats)))
    return report


def _records_step(section: str, fn_path: str) -> Callable[[Any], StepReport]:
    """A step that reads `clean.<section>.input`, transforms records, writes `.output`."""

    def run(clean: Any) -> StepReport:
        fn = get_method(fn_path.replace(":", "."))  # Hydra's importer (as `_target_` uses)
        cfg = clean[section]
        records, report = fn(read_records(cfg.input), cfg)
        report.outputs.append(str(write_records(cfg.output, records)))
        return report

    run.__name__ = f"step_{section}"
    return run


STEPS: dict[str, Callable[[Any], StepReport]] = {
    "battles": step_battles,
    "ratings": step_ratings,
    "chats": step_chats,
    "moderation": _records_step("moderation", "orchestr.arena.release.moderation:moderate_records"),
    "pii": _records_step("pii", "orchestr.arena.release.pii:scrub_records"),
    "blocked_words": _records_step("blocked_words", "orchestr.arena.release.blocked_words:filter_records"),
    "toxicity": _records_step("toxicity", "orchestr.arena.release.toxicity:tag_records"),
    "sample": _records_step("sample", "orchestr.arena.release.sample:sample_records"),
}


def resolve(step: str, pipelines: dict[str, list[str]]) -> list[str]:
    """`step` as a list of step names: a pipeline's steps, or the step itself."""
    names = list(pipelines[step]) if step in pipelines else [step]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        known = sorted(STEPS) + sorted(pipelines)
        raise ValueError(
            f"clean.step={step!r}: unknown step {unknown[0]!r}; choose one of {', '.join(known)}"
        )
    return names


def run_steps(clean: Any) -> list[StepReport]:
    reports = []
    for name in resolve(clean.step, dict(clean.pipelines)):
        report = STEPS[name](clean)
        print(report.summary(), flush=True)
        reports.append(report)
    return reports
