"""The leaderboard tab: ratings computed from this server's vote logs by the arena analytics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from orchestr.services.web.context import WebContext

log = logging.getLogger(__name__)

COLUMNS = {"rank": "Rank", "model": "Model", "rating": "Rating", "ci_95": "95% CI", "votes": "Votes",
           "bt_rating": "Bradley–Terry", "elo_rating": "Elo"}
EMPTY = ("### 🏆 Leaderboard\nNo ratings yet: no arena votes were found in `{log_dir}`. "
         "Vote in the arena tabs, then press **Refresh leaderboard**.")


def leaderboard(log_dir: str):
    """(markdown, dataframe-or-None) for the current logs; never raises into the UI."""
    try:
        from orchestr.arena.ratings import leaderboard_from_logs

        table = leaderboard_from_logs(log_dir)
    except Exception as exc:  # bad logs or a broken analytics install: a message, not a broken tab
        log.warning("leaderboard computation failed: %s", exc)
        return f"### 🏆 Leaderboard\n⚠️ Could not compute ratings from `{log_dir}`: {exc}", None
    if table is None or len(table) == 0:
        return EMPTY.format(log_dir=log_dir), None
    shown = table[[c for c in COLUMNS if c in table.columns]].rename(columns=COLUMNS)
    return (f"### 🏆 Leaderboard\n{len(table)} models rated by Bradley–Terry from {int(table['votes'].sum()) // 2} "
            f"arena votes in `{log_dir}` (95% CI by bootstrap)."), shown


@dataclass
class LeaderboardTab:
    fill: Callable[[], tuple]  # page load: fresh values for `outputs`
    outputs: list


def build_leaderboard_tab(ctx: WebContext) -> LeaderboardTab:
    text = gr.Markdown("", elem_id="leaderboard_notice")
    table = gr.Dataframe(visible=False, elem_id="leaderboard_table", interactive=False, wrap=True)
    refresh = gr.Button("🔄 Refresh leaderboard", elem_id="leaderboard_refresh")

    def fill():
        md, df = leaderboard(ctx.cfg.log_dir)
        if df is None:
            return md, gr.Dataframe(value=None, visible=False)
        return md, gr.Dataframe(value=df, visible=True)

    refresh.click(fill, None, [text, table])
    return LeaderboardTab(fill=fill, outputs=[text, table])
