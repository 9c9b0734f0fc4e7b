"""The checks a user message passes before it reaches a model: guards, then moderation."""

from __future__ import annotations

import time
from dataclasses import dataclass

from orchestr.services.web.context import GenParams, WebContext
from orchestr.services.web.conversation import ASSISTANT, USER, Conversation
from orchestr.services.web.guards import input_problem
from orchestr.services.web.moderation import REFUSAL


@dataclass
class Screened:
    ok: bool
    notice: str = ""
    refused: bool = False  # moderation refusal: show it in the chat as well as in the notice


async def screen(ctx: WebContext, text: str, convs: list[Conversation], params: GenParams, request) -> Screened:
    problem = input_problem(text, convs, ctx.cfg.max_turns, ctx.cfg.max_input_chars)
    if problem:
        return Screened(ok=False, notice=problem)
    verdict = await ctx.moderator.check(text)
    if verdict.flagged:
        # Logged as a chat turn whose reply is the refusal, marked with the verdict; the live
        # conversation does not keep it, so the model never sees the flagged text.
        now = time.time()
        for conv in convs:
            logged = Conversation(model_name=conv.model_name, conv_id=conv.conv_id,
                                  system_message=conv.system_message,
                                  messages=[list(m) for m in conv.messages] + [[USER, text], [ASSISTANT, REFUSAL]])
            ctx.recorder.chat(logged, params.to_log(), now, now, request, moderation=verdict.to_log())
        return Screened(ok=False, notice=REFUSAL, refused=True)
    return Screened(ok=True)


def with_refusal(chat: list[dict], text: str) -> list[dict]:
    """The chatbot value showing a refused message and the refusal (not kept in the conversation)."""
    return [*chat, {"role": USER, "content": text}, {"role": ASSISTANT, "content": REFUSAL}]
