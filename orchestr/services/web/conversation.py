"""One conversation with one model, shaped so its log form matches FastChat's ``state.dict()``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from orchestr.protocol import ChatMessage

USER, ASSISTANT = "user", "assistant"


@dataclass
class Conversation:
    model_name: str
    conv_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    system_message: str = ""
    # [role, text] pairs like FastChat's Conversation.messages; the text of an assistant turn
    # being generated is None until the first token arrives.
    messages: list[list] = field(default_factory=list)
    offset: int = 0
    # False once a turn of it could not be written to the log (the page says so; not logged)
    recorded: bool = field(default=True, compare=False)

    def user_turns(self) -> int:
        return sum(1 for role, _ in self.messages if role == USER)

    def add_user(self, text: str) -> None:
        self.messages.append([USER, text])
        self.messages.append([ASSISTANT, None])

    def set_reply(self, text: str) -> None:
        self.messages[-1][1] = text

    def drop_reply(self) -> bool:
        """Forget the last reply so it can be regenerated; False when there is none."""
        if len(self.messages) < 2 or self.messages[-1][0] != ASSISTANT:
            return False
        self.messages[-1][1] = None
        return True

    def prompt(self) -> list[ChatMessage]:
        """The turns sent to the worker: everything except the pending (empty) reply."""
        msgs = [ChatMessage(role="system", content=self.system_message)] if self.system_message else []
        for role, text in self.messages[self.offset:]:
            if text is not None:
                msgs.append(ChatMessage(role=role, content=text))
        return msgs

    def chatbot(self) -> list[dict]:
        """The value of a gr.Chatbot (messages format)."""
        out = []
        for role, text in self.messages[self.offset:]:
            if text is None:
                continue
            out.append({"role": role, "content": text})
        return out

    def to_log(self) -> dict:
        """FastChat's ``state.dict()``: the conversation fields plus conv_id and model_name."""
        return {
            "template_name": "worker",  # the worker applies the model's own chat template
            "system_message": self.system_message,
            "roles": [USER, ASSISTANT],
            "messages": [list(m) for m in self.messages],
            "offset": self.offset,
            "conv_id": self.conv_id,
            "model_name": self.model_name,
        }
