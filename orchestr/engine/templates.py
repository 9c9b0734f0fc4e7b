"""Chat formatting: the tokenizer's own chat template when it has one, else a built-in
conversation template (FastChat's names: ``vicuna_v1.1``, ``llama-2``, ...)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": ..., "content": ...}


class TemplateError(ValueError):
    """The messages cannot be formatted (bad roles or order); meant for the client."""


@dataclass(frozen=True)
class ConvTemplate:
    name: str
    render: Callable[[Sequence[Message], str], str]  # (messages, default system) -> prompt
    system: str = ""
    stop: tuple[str, ...] = ()  # strings that end the assistant's turn
    add_special_tokens: bool = True  # let the tokenizer add BOS when encoding the prompt
    stop_token_names: tuple[str, ...] = field(default=())  # special tokens that end a turn


def _split_system(messages: Sequence[Message], default: str) -> tuple[str, list[Message]]:
    system = default
    rest: list[Message] = []
    for i, m in enumerate(messages):
        if m["role"] in ("system", "developer"):
            if i != 0:
                raise TemplateError("a system message is only allowed first")
            system = m["content"]
        else:
            rest.append(m)
    return system, rest


def _check_alternation(turns: Sequence[Message]) -> None:
    if not turns:
        raise TemplateError("messages need at least one user message")
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise TemplateError(
                f"messages must alternate user/assistant starting with user; message {i} is {m['role']!r}"
            )


def _vicuna(messages: Sequence[Message], default_system: str) -> str:
    system, turns = _split_system(messages, default_system)
    _check_alternation(turns)
    out = system + " " if system else ""
    for m in turns:
        if m["role"] == "user":
            out += f"USER: {m['content']} "
        else:
            out += f"ASSISTANT: {m['content']}</s>"
    if turns[-1]["role"] == "user":
        out += "ASSISTANT:"
    return out


def _llama2(messages: Sequence[Message], default_system: str) -> str:
    system, turns = _split_system(messages, default_system)
    _check_alternation(turns)
    out = ""
    for i, m in enumerate(turns):
        if m["role"] == "user":
            prefix = "" if i == 0 else "<s>"
            content = m["content"]
            if i == 0 and system:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
            out += f"{prefix}[INST] {content.strip()} [/INST]"
        else:
            out += f" {m['content'].strip()} </s>"
    return out


def _chatml(messages: Sequence[Message], default_system: str) -> str:
    system, turns = _split_system(messages, default_system)
    out = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    for m in turns:
        out += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


def _generic(messages: Sequence[Message], default_system: str) -> str:
    system, turns = _split_system(messages, default_system)
    out = f"{system}\n\n" if system else ""
    for m in turns:
        role = "User" if m["role"] == "user" else "Assistant"
        out += f"{role}: {m['content']}\n"
    return out + "Assistant:"


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

TEMPLATES: dict[str, ConvTemplate] = {
    t.name: t
    for t in (
        ConvTemplate("vicuna_v1.1", _vicuna, system=_VICUNA_SYSTEM),
        ConvTemplate("llama-2", _llama2),
        ConvTemplate("chatml", _chatml, stop=("<|im_end|>",), add_special_tokens=False,
                     stop_token_names=("<|im_end|>",)),
        ConvTemplate("generic", _generic, stop=("\nUser:",)),
    )
}
ALIASES = {"vicuna": "vicuna_v1.1", "llama2": "llama-2", "llama-2-chat": "llama-2", "one_shot": "generic",
           "zero_shot": "generic", "raw": "generic"}


def get_template(name: str) -> ConvTemplate:
    key = ALIASES.get(name, name)
    if key not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[key]


# tool-call syntaxes of chat templates that render tools (the API parses calls per family)
HERMES, LLAMA3, MISTRAL = "hermes", "llama3_json", "mistral"


def template_family(chat_template: str | None) -> str | None:
    """Which parser fits a tokenizer chat template that renders tools (None: it renders none)."""
    t = str(chat_template or "")
    if "tools" not in t:
        return None
    if "<tool_call>" in t:
        return HERMES
    if "[TOOL_CALLS]" in t or "[AVAILABLE_TOOLS]" in t:
        return MISTRAL
    if "<|python_tag|>" in t or "ipython" in t or "<|eom_id|>" in t:
        return LLAMA3
    return None


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]
    add_special_tokens: bool
    stop_token_ids: tuple[int, ...] = ()


class ChatFormatter:
    """Formats chat messages for one model: ``conv_template`` (if set) wins, else the
    tokenizer's chat template, else the generic fallback."""

    def __init__(self, tokenizer: Any, conv_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = get_template(conv_template) if conv_template else None
        self.uses_tokenizer_template = self.template is None and bool(getattr(tokenizer, "chat_template", None))
        if self.template is None and not self.uses_tokenizer_template:
            self.template = TEMPLATES["generic"]

    @property
    def name(self) -> str:
        return "tokenizer" if self.uses_tokenizer_template else self.template.name

    @property
    def tool_family(self) -> str | None:
        """The tool-call syntax of the tokenizer's chat template; None when it renders no tools."""
        return template_family(self.tokenizer.chat_template) if self.uses_tokenizer_template else None

    def format(self, messages: Sequence[Message], tools: list[dict] | None = None) -> ChatPrompt:
        for m in messages:
            if m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
                raise TemplateError(f"unsupported message role {m.get('role')!r}")
        if self.uses_tokenizer_template:
            kwargs = {"tools": tools} if tools else {}
            try:
                text = self.tokenizer.apply_chat_template(
                    [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages],
                    tokenize=False,
                    add_generation_prompt=True,
                    **kwargs,
                )
            except Exception as exc:  # jinja raise_exception() in templates: bad role order etc.
                raise TemplateError(f"cannot apply the model's chat template: {exc}") from exc
            # The template already holds any BOS it wants; the EOS token ends the turn.
            return ChatPrompt(text=text, stop=(), add_special_tokens=False)
        template = self.template
        ids = []
        for name in template.stop_token_names:
            tid = self.tokenizer.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != getattr(self.tokenizer, "unk_token_id", None):
                ids.append(tid)
        return ChatPrompt(
            text=template.render(messages, template.system),
            stop=template.stop,
            add_special_tokens=template.add_special_tokens,
            stop_token_ids=tuple(ids),
        )
