"""The single-model chat tab: pick a model, chat with streamed replies, vote on the answers."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from orchestr.services.web.context import GenParams, WebContext
from orchestr.services.web.conversation import Conversation
from orchestr.services.web.recorder import VOTE_NOT_RECORDED
from orchestr.services.web.screening import screen, with_refusal
from orchestr.services.web.widgets import NO_MODELS, model_dropdown_update, parameter_controls


@dataclass
class ChatTab:
    model: gr.Dropdown


def build_chat_tab(ctx: WebContext) -> ChatTab:
    models = ctx.models
    state = gr.State(None)
    with gr.Row(equal_height=True):
        model = gr.Dropdown(choices=models, value=models[0] if models else None, label="Model",
                            elem_id="chat_model", interactive=True, scale=6)
        refresh = gr.Button("🔄 Refresh models", elem_id="chat_refresh_models", scale=1, size="md")
    chatbot = gr.Chatbot(label="Chat", elem_id="chat_chatbot", height=460, placeholder=None if models else NO_MODELS,
                         feedback_options=None, buttons=["copy"])
    notice = gr.Markdown("", elem_id="chat_notice", elem_classes=["notice"])
    with gr.Row(equal_height=True):
        textbox = gr.Textbox(show_label=False, placeholder="Type a message and press Enter", elem_id="chat_input",
                             scale=8, lines=1, max_lines=8, autofocus=True)
        send = gr.Button("Send", variant="primary", elem_id="chat_send", scale=1, min_width=100)
    with gr.Row():
        upvote = gr.Button("👍 Upvote", elem_id="chat_upvote", interactive=False, min_width=110)
        downvote = gr.Button("👎 Downvote", elem_id="chat_downvote", interactive=False, min_width=110)
        flag = gr.Button("⚠️ Flag", elem_id="chat_flag", interactive=False, min_width=110)
        regenerate = gr.Button("🔄 Regenerate", elem_id="chat_regenerate", interactive=False, min_width=110)
        clear = gr.Button("🗑️ Clear history", elem_id="chat_clear", min_width=110)
    temperature, top_p, max_tokens = parameter_controls(ctx.cfg, "chat")

    buttons = [upvote, downvote, flag, regenerate]

    def controls(enabled: bool) -> list:
        return [gr.Button(interactive=enabled) for _ in buttons]

    async def on_send(conv, model_name, text, temp, tp, max_new, request: gr.Request):
        params = GenParams.from_ui(temp, tp, max_new)
        if not model_name:
            yield conv, gr.skip(), gr.skip(), NO_MODELS, *controls(False)
            return
        if conv is None or conv.model_name != model_name:
            conv = Conversation(model_name=model_name)
        verdict = await screen(ctx, text or "", [conv], params, request)
        if not verdict.ok:
            chat = with_refusal(conv.chatbot(), text) if verdict.refused else conv.chatbot()
            keep = "" if verdict.refused else gr.skip()
            yield conv, chat, keep, verdict.notice, *controls(conv.user_turns() > 0)
            return
        conv.add_user(text)
        yield conv, conv.chatbot(), "", "", *controls(False)
        async for _ in ctx.stream_reply(conv, params, request):
            yield conv, conv.chatbot(), gr.skip(), gr.skip(), *controls(False)
        yield conv, conv.chatbot(), gr.skip(), ctx.turn_notice([conv]), *controls(True)

    async def on_regenerate(conv, temp, tp, max_new, request: gr.Request):
        if conv is None or not conv.drop_reply():
            yield conv, gr.skip(), "Nothing to regenerate yet.", *controls(False)
            return
        params = GenParams.from_ui(temp, tp, max_new)
        yield conv, conv.chatbot(), "", *controls(False)
        async for _ in ctx.stream_reply(conv, params, request):
            yield conv, conv.chatbot(), gr.skip(), *controls(False)
        yield conv, conv.chatbot(), ctx.turn_notice([conv]), *controls(True)

    def on_vote(vote_type: str):
        def handler(conv, request: gr.Request):
            if conv is None or conv.user_turns() == 0:
                return "Nothing to vote on yet.", *controls(False)
            if not ctx.recorder.chat_vote(vote_type, conv, request):
                return VOTE_NOT_RECORDED, *controls(True)  # the answer stays; the vote may be tried again
            thanks = {"upvote": "👍 Thanks for the upvote!", "downvote": "👎 Thanks, noted.",
                      "flag": "⚠️ Thanks, the answer was flagged for review."}[vote_type]
            # One vote per answer; regenerate stays available.
            return thanks, gr.Button(interactive=False), gr.Button(interactive=False), \
                gr.Button(interactive=False), gr.Button(interactive=True)
        return handler

    def on_clear():
        return None, [], "", "", *controls(False)

    send_inputs = [state, model, textbox, temperature, top_p, max_tokens]
    send_outputs = [state, chatbot, textbox, notice, *buttons]
    # Progress shows on the chatbot only, not on every output.
    textbox.submit(on_send, send_inputs, send_outputs, show_progress_on=[chatbot])
    send.click(on_send, send_inputs, send_outputs, show_progress_on=[chatbot])
    regenerate.click(on_regenerate, [state, temperature, top_p, max_tokens], [state, chatbot, notice, *buttons],
                     show_progress_on=[chatbot])
    for button, vote_type in ((upvote, "upvote"), (downvote, "downvote"), (flag, "flag")):
        button.click(on_vote(vote_type), [state], [notice, *buttons], show_progress="hidden")
    reset_outputs = [state, chatbot, textbox, notice, *buttons]
    clear.click(on_clear, None, reset_outputs, show_progress="hidden")
    chatbot.clear(on_clear, None, reset_outputs, show_progress="hidden")  # the chatbot's own 🗑 icon
    # A different model starts a different conversation.
    model.change(on_clear, None, reset_outputs, show_progress="hidden")
    refresh.click(lambda cur: model_dropdown_update(ctx, cur, refresh=True), [model], [model])
    return ChatTab(model=model)
