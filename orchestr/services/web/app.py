"""Assembles the Gradio page (single chat, or arena + chat + leaderboard) on a FastAPI app."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from orchestr.services.web.context import WebContext
from orchestr.services.web.ui_arena import build_arena_tab
from orchestr.services.web.ui_chat import build_chat_tab
from orchestr.services.web.ui_leaderboard import LeaderboardTab, build_leaderboard_tab

TITLE = "orchestr · Chat & Arena"

CSS = """
.gradio-container { width: 100% !important; max-width: 1280px !important; margin: auto !important; }
.gradio-container .main, .gradio-container .wrap.contain, .gradio-container main { width: 100%; }
#page_header h1 { margin-bottom: 0.1em; }
.notice { min-height: 1.6em; }
.notice p { font-weight: 500; }
.model-name { text-align: center; }
.model-name p { font-size: 1.05em; margin: 0.2em 0; }
footer { display: none !important; }
"""

HEADER = {
    "multi": "# 🎼 orchestr\nChat with the models this server runs, or let two of them battle anonymously "
             "and vote for the better answer.",
    "single": "# 🎼 orchestr\nChat with the models this server runs.",
}


def build_demo(ctx: WebContext) -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(HEADER[ctx.cfg.mode], elem_id="page_header")
        boards: list[LeaderboardTab] = []
        # (dropdown, which model it defaults to): the side-by-side's B starts on the second model.
        pickers: list[tuple[gr.Dropdown, int]] = []
        if ctx.cfg.mode == "single":
            pickers.append((build_chat_tab(ctx).model, 0))
        else:
            with gr.Tabs(elem_id="tabs"):
                with gr.Tab("⚔️ Arena (battle)", elem_id="tab_anony"):
                    arenas = [build_arena_tab(ctx, anony=True)]
                with gr.Tab("⚔️ Arena (side-by-side)", elem_id="tab_named"):
                    arenas.append(build_arena_tab(ctx, anony=False))
                    pickers += [(dd, i) for i, dd in enumerate(arenas[-1].dropdowns)]
                with gr.Tab("💬 Direct chat", elem_id="tab_chat"):
                    pickers.append((build_chat_tab(ctx).model, 0))
                with gr.Tab("🏆 Leaderboard", elem_id="tab_leaderboard"):
                    boards.append(build_leaderboard_tab(ctx))
            for event in (e for a in arenas for e in a.votes):  # each vote refreshes the board
                event.then(boards[0].fill, None, boards[0].outputs, show_progress="hidden")

        built_with = list(ctx.models)  # the choices the page was rendered with

        def on_load():
            # Each page load offers the controller's current models (model_list_mode=reload).
            # Unchanged lists are skipped: updating the pickers of a not-yet-shown tab re-mounts it,
            # which would reset whatever the user already set there.
            models = ctx.current_models()
            out: list = []
            for _, index in pickers:
                value = models[min(index, len(models) - 1)] if models else None
                out.append(gr.skip() if models == built_with else gr.Dropdown(choices=models, value=value))
            for board in boards:
                out += list(board.fill())
            return out[0] if len(out) == 1 else out  # one output: Gradio takes the return value as is

        demo.load(on_load, None, [dd for dd, _ in pickers] + [c for b in boards for c in b.outputs])
    demo.queue(default_concurrency_limit=ctx.cfg.concurrency_count)
    return demo


def create_app(ctx: WebContext, auth: list[tuple[str, str]] | None = None) -> FastAPI:
    """The page on a FastAPI app; with ``auth`` (user, password) pairs it needs a login."""
    app = FastAPI(title="orchestr web")

    @app.get("/health")
    def health() -> dict:
        return ctx.health()

    demo = build_demo(ctx)
    return gr.mount_gradio_app(app, demo, path="", theme=gr.themes.Soft(primary_hue="indigo"), css=CSS,
                               ssr_mode=False, footer_links=[], auth=auth or None)
