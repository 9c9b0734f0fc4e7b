"""The leaderboard tab: ratings computed from this server's vote logs by the arena analytics, with
FastChat's leaderboard plots (win fractions, battle counts, ratings with CIs). It refreshes after
every vote (the arena tabs chain `fill` on their vote buttons) and on page load."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from orchestr.services.web.context import WebContext

log = logging.getLogger(__name__)

COLUMNS = {"rank": "Rank (UB)", "model": "Model", "rating": "Rating", "ci_95": "95% CI", "votes": "Votes",
           "bt_rating": "Bradley–Terry", "elo_rating": "Elo"}
EMPTY = ("### 🏆 Leaderboard\nNo ratings yet: no arena votes were found in `{log_dir}`. "
         "Vote in the anonymous battle tab: the board updates after each vote.")
PLOTS = ("win_fraction.png", "battle_count.png", "rating_ci.png")
_plot_dir = Path(tempfile.mkdtemp(prefix="orchestr-leaderboard-"))


def leaderboard(log_dir: str, with_plots: bool = False):
    """(markdown, dataframe-or-None[, plot paths]) for the current logs; never raises into the UI."""
    plots: list[str] = []
    try:
        from orchestr.arena.ratings import rated_battles_from_logs

        table, df = rated_battles_from_logs(log_dir)
        if with_plots and len(table):
            from orchestr.arena.plots import write_plots

            plots = [str(p) for p in write_plots(df, table, _plot_dir)]
    except Exception as exc:  # bad logs or a broken analytics install: a message, not a broken tab
        log.warning("leaderboard computation failed: %s", exc)
        md = f"### 🏆 Leaderboard\n⚠️ Could not compute ratings from `{log_dir}`: {exc}"
        return (md, None, plots) if with_plots else (md, None)
    if table is None or len(table) == 0:
        return (EMPTY.format(log_dir=log_dir), None, plots) if with_plots else (EMPTY.format(log_dir=log_dir), None)
    shown = table[[c for c in COLUMNS if c in table.columns]].rename(columns=COLUMNS)
    md = (f"### 🏆 Leaderboard\n{len(table)} models rated by Bradley–Terry from {int(table['votes'].sum()) // 2} "
          f"anonymous arena votes in `{log_dir}` (95% CI by bootstrap; models whose intervals overlap share "
          "a rank).")
    return (md, shown, plots) if with_plots else (md, shown)


@dataclass
class LeaderboardTab:
    fill: Callable[[], tuple]  # page load: fresh values for `outputs`
    outputs: list


def build_leaderboard_tab(ctx: WebContext) -> LeaderboardTab:
    text = gr.Markdown("", elem_id="leaderboard_notice")
    table = gr.Dataframe(visible=False, elem_id="leaderboard_table", interactive=False, wrap=True)
    with gr.Row():
        images = [gr.Image(visible=False, elem_id=f"leaderboard_{name[:-4]}", show_label=False, type="filepath")
                  for name in PLOTS]
    refresh = gr.Button("🔄 Refresh leaderboard", elem_id="leaderboard_refresh")

    def fill():
        md, df, plots = leaderboard(ctx.cfg.log_dir, with_plots=True)
        imgs = [gr.Image(value=p, visible=True) for p in plots] + \
               [gr.Image(value=None, visible=False) for _ in range(len(PLOTS) - len(plots))]
        if df is None:
            return md, gr.Dataframe(value=None, visible=False), *imgs
        return md, gr.Dataframe(value=df, visible=True), *imgs

    refresh.click(fill, None, [text, table, *images])
    return LeaderboardTab(fill=fill, outputs=[text, table, *images])
