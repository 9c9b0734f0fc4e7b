"""``POST /v1/responses`` (OpenAI's Responses API) over chat completions: input items and
``instructions`` become chat messages, ``text.format`` a ``response_format``, function tools chat
tools; ``previous_response_id`` continues a conversation this server still holds in memory.
Streaming sends the Responses event types (``response.created`` ... ``response.completed``)."""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from orchestr.protocol import ChatCompletionRequest, ChatCompletionResponse, ResponsesRequest, StreamOptions
from orchestr.services.api_errors import ApiError
from orchestr.services.serving_chat import ChatServing

STORE_SIZE = 1000  # responses kept for previous_response_id (oldest dropped first)


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_of(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text"):
                raise ApiError(400, "only text content parts are supported", param=f"{param}.{i}")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise ApiError(400, "content must be a string or a list of text parts", param=param)


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items as chat messages (function calls and their outputs included)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ApiError(400, f"unsupported role {role!r}", param=f"input.{i}.role")
            out.append({"role": role, "content": _text_of(item.get("content", ""), f"input.{i}.content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id") or _id("call"), "type": "function",
                    "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "{}")}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") is not None:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            out.append({"role": "tool", "tool_call_id": item.get("call_id"),
                        "content": output if isinstance(output, str) else json.dumps(output)})
        else:
            raise ApiError(400, f"input items of type {kind!r} are not supported", param=f"input.{i}.type")
    return out


def chat_tools(req: ResponsesRequest) -> tuple[list[dict] | None, Any]:
    tools = None
    if req.tools:
        tools = []
        for i, t in enumerate(req.tools):
            if t.get("type") != "function":
                raise ApiError(400, "only function tools are supported", param=f"tools.{i}.type")
            fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
            tools.append({"type": "function", "function": fn})
    choice = req.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return tools, choice


def response_format(req: ResponsesRequest) -> dict | None:
    fmt = (req.text or {}).get("format")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}}
    return fmt


class ResponsesServing:
    def __init__(self, chat: ChatServing):
        self.chat = chat
        self.store: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()  # id -> conversation so far

    def _remember(self, response_id: str, messages: list[dict], output: list[dict]) -> None:
        convo = list(messages)
        text = "".join(p["text"] for o in output if o["type"] == "message" for p in o["content"])
        calls = [{"id": o["call_id"], "type": "function", "function": {"name": o["name"], "arguments": o["arguments"]}}
                 for o in output if o["type"] == "function_call"]
        convo.append({"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})})
        self.store[response_id] = convo
        while len(self.store) > STORE_SIZE:
            self.store.popitem(last=False)

    def _chat_request(self, req: ResponsesRequest, stream: bool) -> tuple[ChatCompletionRequest, list[dict]]:
        history: list[dict] = []
        if req.previous_response_id:
            if req.previous_response_id not in self.store:
                raise ApiError(404, f"no response {req.previous_response_id!r} is held by this server",
                               param="previous_response_id", code="response_not_found")
            history = [m for m in self.store[req.previous_response_id] if m["role"] not in ("system", "developer")]
        messages = history + input_messages(req.input)
        system = [{"role": "system", "content": req.instructions}] if req.instructions else []
        tools, choice = chat_tools(req)
        try:
            chat = ChatCompletionRequest.model_validate({
                "model": req.model, "messages": system + messages, "temperature": req.temperature,
                "top_p": req.top_p, "max_completion_tokens": req.max_output_tokens, "stream": stream,
                "tools": tools, "tool_choice": choice, "parallel_tool_calls": req.parallel_tool_calls,
                "response_format": response_format(req), "seed": req.seed,
                "stream_options": StreamOptions(include_usage=True) if stream else None})
        except ValidationError as e:  # e.g. an empty input: the client's mistake, a 400
            err = e.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            param = "input" if loc.startswith("messages") or not loc else loc
            raise ApiError(400, f"Invalid value for '{param}': {err.get('msg', '')}", param=param,
                           code="invalid_value") from None
        return chat, messages

    def _response(self, req: ResponsesRequest, rid: str, status: str, output: list[dict], usage: dict | None,
                  finish: str | None = None) -> dict[str, Any]:
        return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
                "model": req.model, "output": output, "instructions": req.instructions,
                "max_output_tokens": req.max_output_tokens, "previous_response_id": req.previous_response_id,
                "temperature": req.temperature, "top_p": req.top_p, "tools": req.tools or [],
                "tool_choice": req.tool_choice or "auto", "parallel_tool_calls": req.parallel_tool_calls,
                "text": req.text or {"format": {"type": "text"}}, "metadata": req.metadata or {},
                "incomplete_details": {"reason": "max_output_tokens"} if finish == "length" else None,
                "error": None, "usage": usage}

    async def create(self, req: ResponsesRequest) -> dict | AsyncIterator[str]:
        await self.chat.generation.router.check_model(req.model)
        chat, messages = self._chat_request(req, bool(req.stream))
        if req.stream:
            # opened here, so a refusal (unknown model, context overflow) is an HTTP error, not a cut stream
            lines = await self.chat.create(chat)
            assert not isinstance(lines, ChatCompletionResponse)
            return self._stream(req, lines, messages)
        answer = await self.chat.create(chat)
        assert isinstance(answer, ChatCompletionResponse)
        choice = answer.choices[0]
        output = _output_items(choice.message.content, [c.model_dump() for c in choice.message.tool_calls or []])
        rid = _id("resp")
        self._remember(rid, messages, output)
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        return self._response(req, rid, status, output, _usage(answer.usage.model_dump()), choice.finish_reason)

    async def _stream(self, req: ResponsesRequest, lines: AsyncIterator[str], messages: list[dict]
                      ) -> AsyncIterator[str]:
        rid, mid = _id("resp"), _id("msg")
        seq = 0

        def event(kind: str, **fields: Any) -> str:
            nonlocal seq
            seq += 1
            return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': seq, **fields})}\n\n"

        yield event("response.created", response=self._response(req, rid, "in_progress", [], None))
        yield event("response.in_progress", response=self._response(req, rid, "in_progress", [], None))
        text, calls, usage, finish, opened = "", {}, None, None, False
        async for block in lines:
            for line in block.split("\n\n"):
                if not line.startswith("data: {"):
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    yield event("error", message=data["error"].get("message"), code=data["error"].get("code"),
                                param=data["error"].get("param"))
                    await lines.aclose()  # type: ignore[attr-defined]
                    return
                if data.get("usage"):
                    usage = _usage(data["usage"])
                for ch in data.get("choices", []):
                    delta = ch.get("delta", {})
                    finish = ch.get("finish_reason") or finish
                    for tc in delta.get("tool_calls") or []:
                        calls.setdefault(tc["index"], {"id": tc.get("id"), "function": tc["function"]})
                    if delta.get("content"):
                        if not opened:
                            opened = True
                            yield event("response.output_item.added", output_index=0, item={
                                "type": "message", "id": mid, "status": "in_progress", "role": "assistant",
                                "content": []})
                            yield event("response.content_part.added", item_id=mid, output_index=0, content_index=0,
                                        part={"type": "output_text", "text": "", "annotations": []})
                        text += delta["content"]
                        yield event("response.output_text.delta", item_id=mid, output_index=0, content_index=0,
                                    delta=delta["content"], logprobs=[])
        output = _output_items(text or None, [calls[i] for i in sorted(calls)], mid)
        if opened:
            part = output[0]["content"][0]
            yield event("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=text,
                        logprobs=[])
            yield event("response.content_part.done", item_id=mid, output_index=0, content_index=0, part=part)
            yield event("response.output_item.done", output_index=0, item=output[0])
        for index, item in enumerate(output):
            if item["type"] == "function_call":
                yield event("response.output_item.added", output_index=index, item={**item, "arguments": ""})
                yield event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                            delta=item["arguments"])
                yield event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                            arguments=item["arguments"])
                yield event("response.output_item.done", output_index=index, item=item)
        self._remember(rid, messages, output)
        status = "incomplete" if finish == "length" else "completed"
        yield event(f"response.{status}", response=self._response(req, rid, status, output, usage, finish))


def _output_items(text: str | None, calls: list[dict], mid: str | None = None) -> list[dict]:
    out: list[dict] = []
    if text:
        out.append({"type": "message", "id": mid or _id("msg"), "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]})
    for c in calls:
        out.append({"type": "function_call", "id": _id("fc"), "call_id": c.get("id") or _id("call"),
                    "name": c["function"]["name"], "arguments": c["function"]["arguments"], "status": "completed"})
    return out


def _usage(u: dict) -> dict:
    return {"input_tokens": u.get("prompt_tokens", 0), "output_tokens": u.get("completion_tokens", 0),
            "total_tokens": u.get("total_tokens", 0), "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}
