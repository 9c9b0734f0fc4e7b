"""What chat and text completions add to plain generation: structured outputs (``response_format``),
tools (``tools``/``tool_choice``), logprobs and ``logit_bias`` — planned from the OpenAI request,
turned into worker request fields, and shaped back into OpenAI's answers and stream deltas.

Plain requests (none of these) never come here past :func:`plan_chat`/:func:`plan_completion`:
the serving code keeps its pre-rendered fast path for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestr.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponseChoice,
    ChatMessage,
    CompletionRequest,
    GenerateChunk,
    GenerateResult,
    ToolCall,
)
from orchestr.services.logprob_shapes import chat_logprobs, completion_logprobs
from orchestr.services.param_errors import ParamError
from orchestr.services.structured import guided_schema
from orchestr.services.tool_calls import (
    calls_from_forced,
    forced_call_schema,
    forced_names,
    functions_of,
    may_start_call,
    parse_tool_calls,
)


def logit_bias_ids(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        try:
            tid = int(key)
        except ValueError:
            raise ParamError(f"logit_bias keys are token ids, got {key!r}", "logit_bias") from None
        if not -100 <= value <= 100:
            raise ParamError(f"logit_bias values must be in [-100, 100], got {value}", "logit_bias")
        out[tid] = float(value)
    return out


@dataclass
class ChatPlan:
    guided_json: dict[str, Any] | None = None
    forced: list[str] | None = None  # a call to one of these must be made (required / named)
    tools: list[dict[str, Any]] | None = None  # rendered by the template (None: tool_choice none)
    logprobs: int | None = None  # top alternatives per token; None: no logprobs
    logit_bias: dict[int, float] | None = None
    parser: str | None = None  # the model's tool-call syntax (set once the worker is known)

    @property
    def plain(self) -> bool:
        return self.guided_json is None and self.tools is None and self.logprobs is None

    def generate_fields(self) -> dict[str, Any]:
        return {"guided_json": self.guided_json, "tools": self.tools, "logprobs": self.logprobs,
                "logit_bias": self.logit_bias}


def plan_chat(req: ChatCompletionRequest) -> ChatPlan:
    plan = ChatPlan(logit_bias=logit_bias_ids(req.logit_bias))
    if req.logprobs:
        plan.logprobs = req.top_logprobs or 0
    elif req.top_logprobs:
        raise ParamError("top_logprobs needs logprobs: true", "top_logprobs")
    plan.guided_json = guided_schema(req.response_format)
    if req.tools is not None or req.tool_choice is not None:
        names = forced_names(req.tools, req.tool_choice)
        choice_none = req.tool_choice == "none"
        if not choice_none and req.tools:
            functions_of(req.tools)
            plan.tools = req.tools
        if names:
            if plan.guided_json is not None:
                raise ParamError("response_format cannot be combined with a forced tool_choice", "response_format")
            plan.forced = names
            plan.guided_json = forced_call_schema(req.tools or [], names, req.parallel_tool_calls is not False)
    return plan


def plan_completion(req: CompletionRequest) -> ChatPlan:
    if req.best_of is not None and req.best_of != (req.n or 1):
        raise ParamError("best_of is not supported (only best_of equal to n)", "best_of")
    return ChatPlan(guided_json=guided_schema(req.response_format), logprobs=req.logprobs,
                    logit_bias=logit_bias_ids(req.logit_bias))


# --------------------------------------------------------------------------- non-streaming answers


def _split_calls(plan: ChatPlan, text: str) -> tuple[str | None, list[ToolCall]]:
    if plan.forced:
        try:
            return None, calls_from_forced(text)
        except (ValueError, KeyError, TypeError):  # cut off by max_tokens: the text is all there is
            return text, []
    if plan.tools and plan.parser:
        return parse_tool_calls(text, plan.parser, plan.tools)
    return text, []


def chat_choice(index: int, result: GenerateResult, plan: ChatPlan) -> ChatCompletionResponseChoice:
    content, calls = _split_calls(plan, result.text)
    finish = result.finish_reason or "stop"
    if calls and finish == "stop":
        finish = "tool_calls"
    message = ChatMessage(role="assistant", content=content, tool_calls=calls or None)
    logprobs = None
    if plan.logprobs is not None:
        logprobs = chat_logprobs(result.logprobs or [], plan.logprobs)
    return ChatCompletionResponseChoice(index=index, message=message, finish_reason=finish, logprobs=logprobs)


def completion_choice_logprobs(result: GenerateResult, plan: ChatPlan) -> dict | None:
    if plan.logprobs is None:
        return None
    return completion_logprobs(result.logprobs or [], plan.logprobs)


# --------------------------------------------------------------------------- streaming


def _tool_call_deltas(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"index": i, "id": c.id, "type": "function",
             "function": {"name": c.function.name, "arguments": c.function.arguments}} for i, c in enumerate(calls)]


class ChatStreamShaper:
    """One choice's worker chunks as chat deltas: ``(delta dict, logprobs or None, finish or None)``.

    Text streams as it comes, except what may be a tool call: a forced call is sent whole when it
    is complete (as ``tool_calls`` deltas), and under ``auto`` text that starts like the
    template's call syntax is held back until it is parsed."""

    def __init__(self, plan: ChatPlan) -> None:
        self.plan = plan
        self.text = ""
        self.sent = 0  # characters of text already sent as content
        self.holding = bool(plan.forced)

    def feed(self, c: GenerateChunk) -> list[tuple[dict[str, Any], dict | None, str | None]]:
        out: list[tuple[dict[str, Any], dict | None, str | None]] = []
        self.text += c.text
        lps = chat_logprobs(c.logprobs, self.plan.logprobs) if self.plan.logprobs is not None and c.logprobs \
            else None
        if not self.holding and self.plan.tools and self.plan.parser and may_start_call(self.text, self.plan.parser):
            self.holding = True
        if not self.holding and len(self.text) > self.sent:
            out.append(({"content": self.text[self.sent:]}, lps, None))
            self.sent = len(self.text)
            lps = None
        elif lps is not None:
            out.append(({}, lps, None))  # logprobs of held-back tokens still stream
        if c.finish_reason is not None:
            finish = c.finish_reason
            if self.holding:
                content, calls = _split_calls(self.plan, self.text)
                if calls:
                    rest = (content or "")[self.sent:]
                    if rest:
                        out.append(({"content": rest}, None, None))
                    out.append(({"tool_calls": _tool_call_deltas(calls)}, None, None))
                    finish = "tool_calls" if finish == "stop" else finish
                elif len(self.text) > self.sent:
                    out.append(({"content": self.text[self.sent:]}, None, None))
            out.append(({}, None, finish))
        return out


def completion_stream_logprobs(c: GenerateChunk, plan: ChatPlan) -> dict | None:
    if plan.logprobs is None or c.logprobs is None:
        return None
    return completion_logprobs(c.logprobs, plan.logprobs)
