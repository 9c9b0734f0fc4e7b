"""The leaderboard tab: ratings computed from this server's vote logs by the arena analytics."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from orchestr.services.web.context import WebContext

log = logging.getLogger(__name__)

# Where the analytics' entry point may live (`leaderboard_from_logs(log_dir) -> DataFrame`).
_PROVIDERS = ("orchestr.arena.leaderboard", "orchestr.arena.ratings", "orchestr.arena")

EMPTY_NO_ANALYTICS = ("### 🏆 Leaderboard\nNo ratings yet: the rating computation is not available in this "
                      "installation. Votes are still recorded in `{log_dir}`.")
EMPTY_NO_VOTES = ("### 🏆 Leaderboard\nNo ratings yet: no arena votes were found in `{log_dir}`. "
                  "Vote in the arena tabs, then press **Refresh leaderboard**.")


def _provider() -> Callable | None:
    for name in _PROVIDERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        fn = getattr(module, "leaderboard_from_logs", None)
        if callable(fn):
            return fn
    return None


def leaderboard(log_dir: str):
    """(markdown, dataframe-or-None) for the current logs; never raises into the UI."""
    fn = _provider()
    if fn is None:
        return EMPTY_NO_ANALYTICS.format(log_dir=log_dir), None
    try:
        table = fn(log_dir)
    except Exception as exc:  # bad/empty logs must show as a message, not a broken tab
        log.warning("leaderboard computation failed: %s", exc)
        return f"### 🏆 Leaderboard\n⚠️ Could not compute ratings from `{log_dir}`: {exc}", None
    if table is None or len(table) == 0:
        return EMPTY_NO_VOTES.format(log_dir=log_dir), None
    return (f"### 🏆 Leaderboard\nRatings (Bradley–Terry, 95 % CI) from {len(table)} models' arena votes "
            f"in `{log_dir}`."), table


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
