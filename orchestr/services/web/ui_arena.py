"""The arena tabs: an anonymous battle (random hidden pair) and a named side-by-side (user's pair).

Both sides get the same message and answer at the same time; one vote per round, after which the
anonymous tab reveals the names and the round is closed until "New round".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import gradio as gr

from orchestr.services.web.context import GenParams, WebContext
from orchestr.services.web.conversation import Conversation
from orchestr.services.web.recorder import VOTE_NOT_RECORDED
from orchestr.services.web.sampling import NoBattlePair, battle_pair
from orchestr.services.web.screening import screen, with_refusal
from orchestr.services.web.widgets import NO_MODELS, model_dropdown_update, parameter_controls

log = logging.getLogger(__name__)

VOTES = (  # (button label, log type, elem suffix, thanks)
    ("👈 A is better", "leftvote", "vote_a", "You preferred **Model A**."),
    ("👉 B is better", "rightvote", "vote_b", "You preferred **Model B**."),
    ("🤝 Tie", "tievote", "vote_tie", "You called it a **tie**."),
    ("👎 Both are bad", "bothbad_vote", "vote_bothbad", "You found **both answers bad**."),
)
SIDES = ("a", "b")

ANONY_RULES = """\
### ⚔️ Chatbot Arena — anonymous battle
Ask anything: two anonymous models answer side by side. Vote for the better answer; the names are
revealed after your vote. Keep chatting until you decide, then press **New round** for another pair.
"""
NAMED_RULES = """\
### ⚔️ Chatbot Arena — side by side
Pick two models, ask anything, and compare their answers. Vote for the better one.
"""


@dataclass
class ArenaTab:
    dropdowns: list[gr.Dropdown]  # empty on the anonymous tab
    votes: list  # the vote events: the page chains the leaderboard's refresh on them


def _hidden_label(side: str) -> str:
    return f"**Model {side.upper()}**"


def _revealed_label(side: str, name: str) -> str:
    return f"**Model {side.upper()}: `{name}`**"


def build_arena_tab(ctx: WebContext, anony: bool) -> ArenaTab:
    p = "anony" if anony else "named"
    models = ctx.models
    gr.Markdown(ANONY_RULES if anony else NAMED_RULES, elem_classes=["rules"])
    states = [gr.State(None), gr.State(None)]
    dropdowns: list[gr.Dropdown] = []
    if not anony:
        with gr.Row(equal_height=True):
            for i, side in enumerate(SIDES):
                default = models[min(i, len(models) - 1)] if models else None
                dropdowns.append(gr.Dropdown(choices=models, value=default, label=f"Model {side.upper()}",
                                             elem_id=f"{p}_model_{side}", interactive=True, scale=3))
            refresh = gr.Button("🔄 Refresh models", elem_id=f"{p}_refresh_models", scale=1)
    with gr.Row(equal_height=True):
        chatbots, labels = [], []
        for side in SIDES:
            with gr.Column():
                chatbots.append(gr.Chatbot(label=f"Model {side.upper()}", elem_id=f"{p}_chatbot_{side}",
                                           height=420, feedback_options=None, buttons=["copy"]))
                labels.append(gr.Markdown(_hidden_label(side) if anony else "", elem_id=f"{p}_name_{side}",
                                          elem_classes=["model-name"]))
    notice = gr.Markdown("", elem_id=f"{p}_notice", elem_classes=["notice"])
    with gr.Row():
        vote_buttons = [gr.Button(label, elem_id=f"{p}_{suffix}", interactive=False)
                        for label, _, suffix, _ in VOTES]
    with gr.Row(equal_height=True):
        textbox = gr.Textbox(show_label=False, placeholder="Type a message for both models and press Enter",
                             elem_id=f"{p}_input", scale=8, lines=1, max_lines=8)
        send = gr.Button("Send", variant="primary", elem_id=f"{p}_send", scale=1, min_width=100)
    with gr.Row():
        new_round = gr.Button("🎲 New round" if anony else "🗑️ Clear history", elem_id=f"{p}_new_round")
        regenerate = gr.Button("🔄 Regenerate", elem_id=f"{p}_regenerate", interactive=False)
        leak = gr.Button("🚩 Identity leaked", elem_id=f"{p}_leak", interactive=False, visible=anony)
    temperature, top_p, max_tokens = parameter_controls(ctx.cfg, p)

    # Output groups: votes, then the round's other controls, then the input.
    def votes(enabled: bool) -> list:
        return [gr.Button(interactive=enabled) for _ in vote_buttons]

    def after_turn(convs) -> list:
        done = convs[0] is not None and convs[0].user_turns() > 0
        return [*votes(done), gr.Button(interactive=done), gr.Button(interactive=done)]

    def busy() -> list:
        return [*votes(False), gr.Button(interactive=False), gr.Button(interactive=False)]

    round_controls = [*vote_buttons, regenerate, leak]

    def labels_for(convs, reveal: bool) -> list:
        if not anony:
            return [gr.skip(), gr.skip()]
        if reveal and convs[0] is not None:
            return [_revealed_label(s, c.model_name) for s, c in zip(SIDES, convs, strict=True)]
        return [_hidden_label(s) for s in SIDES]

    def new_pair(named: list[str | None]) -> list[Conversation] | str:
        if anony:
            available = ctx.current_models()
            try:
                a, b = battle_pair(available, ctx.cfg.arena_sampling_weights, ctx.cfg.arena_excluded_pairs)
            except NoBattlePair as exc:
                log.info("no battle pair: %s", exc)
                return ("⚠️ A battle needs two different models, and this server does not run two that may "
                        "meet right now. Try the side-by-side arena or the direct chat.")
            return [Conversation(model_name=a), Conversation(model_name=b)]
        if not all(named):
            return NO_MODELS if not ctx.models else "Pick a model for each side first."
        return [Conversation(model_name=named[0]), Conversation(model_name=named[1])]

    async def on_send(conv_a, conv_b, model_a, model_b, text, temp, tp, max_new, request: gr.Request):
        named = [model_a, model_b]
        convs = [conv_a, conv_b]
        params = GenParams.from_ui(temp, tp, max_new)
        stale = not anony and convs[0] is not None and [c.model_name for c in convs] != named
        if convs[0] is None or stale:
            pair = await asyncio.to_thread(new_pair, named)
            if isinstance(pair, str):
                yield *convs, gr.skip(), gr.skip(), gr.skip(), pair, *labels_for(convs, False), *busy()
                return
            convs = pair
        verdict = await screen(ctx, text or "", convs, params, request)
        if not verdict.ok:
            chats = [with_refusal(c.chatbot(), text) if verdict.refused else c.chatbot() for c in convs]
            keep = "" if verdict.refused else gr.skip()
            yield *convs, *chats, keep, verdict.notice, *labels_for(convs, False), *after_turn(convs)
            return
        for c in convs:
            c.add_user(text)
        yield *convs, *(c.chatbot() for c in convs), "", "", *labels_for(convs, False), *busy()
        async for _ in ctx.stream_replies(convs, params, request):
            yield *convs, *(c.chatbot() for c in convs), gr.skip(), gr.skip(), gr.skip(), gr.skip(), *busy()
        yield (*convs, *(c.chatbot() for c in convs), gr.skip(), ctx.turn_notice(convs), gr.skip(), gr.skip(),
               *after_turn(convs))

    async def on_regenerate(conv_a, conv_b, temp, tp, max_new, request: gr.Request):
        convs = [conv_a, conv_b]
        if convs[0] is None or not all(c.drop_reply() for c in convs):
            yield *convs, gr.skip(), gr.skip(), "Nothing to regenerate yet.", *after_turn(convs)
            return
        params = GenParams.from_ui(temp, tp, max_new)
        yield *convs, *(c.chatbot() for c in convs), "", *busy()
        async for _ in ctx.stream_replies(convs, params, request):
            yield *convs, *(c.chatbot() for c in convs), gr.skip(), *busy()
        yield *convs, *(c.chatbot() for c in convs), ctx.turn_notice(convs), *after_turn(convs)

    def on_vote(vote_type: str, thanks: str):
        def handler(conv_a, conv_b, request: gr.Request):
            convs = [conv_a, conv_b]
            if convs[0] is None or convs[0].user_turns() == 0:
                return "Chat first, then vote.", *labels_for(convs, False), *after_turn(convs), gr.skip(), gr.skip()
            if not ctx.recorder.arena(vote_type, convs, anony=anony, request=request):
                # the answers stay on screen, the round stays open: the vote may be tried again
                return (VOTE_NOT_RECORDED, *labels_for(convs, False), *after_turn(convs), gr.skip(), gr.skip())
            tail = " Press **New round** to battle again." if anony else " Clear the history to compare again."
            # The round is closed: no second vote, no more turns; the leak flag stays available.
            return (f"✅ Thanks for voting! {thanks}{tail}", *labels_for(convs, True),
                    *votes(False), gr.Button(interactive=False), gr.Button(interactive=anony),
                    gr.Textbox(interactive=False), gr.Button(interactive=False))
        return handler

    def on_leak(conv_a, conv_b, request: gr.Request):
        convs = [conv_a, conv_b]
        if convs[0] is None or convs[0].user_turns() == 0:
            return "Nothing to flag yet.", gr.skip()
        if not ctx.recorder.arena("flag", convs, anony=anony, request=request, flag_reason="identity_leak"):
            return VOTE_NOT_RECORDED, gr.skip()
        return "🚩 Thanks: this battle is marked as leaking a model's identity and will not be rated.", \
            gr.Button(interactive=False)

    def on_new_round():
        return (None, None, [], [], gr.Textbox(value="", interactive=True), "", *labels_for([None, None], False),
                *votes(False), gr.Button(interactive=False), gr.Button(interactive=False), gr.Button(interactive=True))

    pickers = dropdowns or [gr.State(None), gr.State(None)]  # the anonymous tab has no pickers
    send_inputs = [*states, *pickers, textbox, temperature, top_p, max_tokens]
    send_outputs = [*states, *chatbots, textbox, notice, *labels, *round_controls]
    # Progress shows on the chatbots only (not on every output, e.g. the name labels).
    textbox.submit(on_send, send_inputs, send_outputs, show_progress_on=chatbots)
    send.click(on_send, send_inputs, send_outputs, show_progress_on=chatbots)
    regenerate.click(on_regenerate, [*states, temperature, top_p, max_tokens],
                     [*states, *chatbots, notice, *round_controls], show_progress_on=chatbots)
    vote_events = [button.click(on_vote(vote_type, thanks), states, [notice, *labels, *round_controls, textbox, send],
                                show_progress="hidden")
                   for button, (_, vote_type, _, thanks) in zip(vote_buttons, VOTES, strict=True)]
    leak.click(on_leak, states, [notice, leak], show_progress="hidden")
    reset_outputs = [*states, *chatbots, textbox, notice, *labels, *round_controls, send]
    new_round.click(on_new_round, None, reset_outputs, show_progress="hidden")
    for chatbot in chatbots:  # a chatbot's own 🗑 icon ends the round for both sides
        chatbot.clear(on_new_round, None, reset_outputs, show_progress="hidden")
    for dd in dropdowns:
        dd.change(on_new_round, None, reset_outputs, show_progress="hidden")
    if dropdowns:
        def refresh_both(a, b):
            return model_dropdown_update(ctx, a, refresh=True), model_dropdown_update(ctx, b)
        refresh.click(refresh_both, dropdowns, dropdowns)
    return ArenaTab(dropdowns=dropdowns, votes=vote_events)
