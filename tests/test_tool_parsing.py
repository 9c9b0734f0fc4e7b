"""Tool-call plumbing that needs no model: tool_choice checks, the forced-call schema, and the
parsers per chat-template family (on texts such models write)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from orchestr.engine.templates import HERMES, LLAMA3, MISTRAL, template_family
from orchestr.protocol import GenerateChunk
from orchestr.services.param_errors import ParamError
from orchestr.services.serving_features import ChatPlan, ChatStreamShaper
from orchestr.services.tool_calls import forced_call_schema, forced_names, parse_tool_calls

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def test_tool_choice_checks():
    assert forced_names([WEATHER, TIME], "required") == ["get_weather", "get_time"]
    assert forced_names([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}}) == ["get_time"]
    assert forced_names([WEATHER], "auto") is None and forced_names([WEATHER], None) is None
    for bad, param in [("sometimes", "tool_choice"), ({"type": "function", "function": {"name": "nope"}}, "tool_choice")]:
        with pytest.raises(ParamError) as e:
            forced_names([WEATHER], bad)
        assert e.value.param == param
    with pytest.raises(ParamError):
        forced_names(None, "required")
    with pytest.raises(ParamError):
        forced_names([{"type": "retrieval"}], "auto")


def test_forced_schema_accepts_valid_calls_only():
    assert forced_call_schema([WEATHER, TIME], ["get_weather", "get_time"], parallel=True)["maxItems"] == 2
    schema = forced_call_schema([WEATHER, TIME], ["get_weather", "get_time"], parallel=False)
    jsonschema.validate([{"name": "get_weather", "arguments": {"city": "Paris"}}], schema)
    for bad in ([], [{"name": "get_weather", "arguments": {}}], [{"name": "x", "arguments": {}}],
                [{"name": "get_time", "arguments": {}}] * 2):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.parametrize("family,text,content", [
    (HERMES, 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "Let me check."),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}', None),
    (LLAMA3, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', None),
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', None),
])
def test_parsers_per_family(family, text, content):
    got_content, calls = parse_tool_calls(text, family, [WEATHER])
    assert got_content == content
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]


def test_text_answers_and_unknown_functions_stay_content():
    for family in (HERMES, LLAMA3, MISTRAL, None):
        assert parse_tool_calls("It is sunny.", family, [WEATHER]) == ("It is sunny.", [])
    text = '<tool_call>{"name": "launch_rocket", "arguments": {}}</tool_call>'
    assert parse_tool_calls(text, HERMES, [WEATHER]) == (text, [])


def test_template_families():
    assert template_family("{% for t in tools %}<tool_call>{% endfor %}") == HERMES
    assert template_family("{{ tools }}[AVAILABLE_TOOLS][TOOL_CALLS]") == MISTRAL
    assert template_family("{% if tools %}<|python_tag|>{% endif %}") == LLAMA3
    assert template_family("<|im_start|>{{ message.content }}") is None


def test_stream_shaper_holds_back_calls_and_streams_text():
    plan = ChatPlan(tools=[WEATHER], parser=HERMES)
    shaper = ChatStreamShaper(plan)
    out = shaper.feed(GenerateChunk(text="<tool_"))
    out += shaper.feed(GenerateChunk(text='call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'))
    out += shaper.feed(GenerateChunk(finish_reason="stop"))
    deltas = [d for d, _, _ in out]
    assert not any("content" in d for d in deltas)
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d][0]
    assert calls[0]["function"]["name"] == "get_weather" and out[-1] == ({}, None, "tool_calls")
    plain = ChatStreamShaper(plan)
    out = plain.feed(GenerateChunk(text="Hello")) + plain.feed(GenerateChunk(text=" there", finish_reason="stop"))
    assert [d for d, _, _ in out] == [{"content": "Hello"}, {"content": " there"}, {}]


def test_a_template_with_tools_renders_them_and_names_its_parser():
    from transformers import AutoTokenizer

    from orchestr.engine.loader import resolve_model_path
    from orchestr.engine.prompts import render_prompt
    from orchestr.engine.templates import ChatFormatter
    from orchestr.protocol import ChatMessage, GenerateRequest, ToolCall, ToolCallFunction

    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded://SmolLM2-135M-Instruct"))
    assert ChatFormatter(tok).tool_family is None  # SmolLM2's own template renders no tools
    # a Hermes-style template (as Qwen2.5 / Hermes models ship): tools in the system turn, calls in tags
    tok.chat_template = (
        "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
        "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
        "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    formatter = ChatFormatter(tok)
    assert formatter.tool_family == HERMES
    call = ToolCall(id="c1", function=ToolCallFunction(name="get_weather", arguments='{"city": "Oslo"}'))
    req = GenerateRequest(model="m", tools=[WEATHER], messages=[
        ChatMessage(role="user", content="Weather in Oslo?"),
        ChatMessage(role="assistant", content=None, tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="c1", content='{"temp": 3}')])
    text = render_prompt(formatter, tok, req).text
    assert '"name": "get_weather"' in text and "<tools>" in text
    # the call's arguments reach the template as an object, not a JSON string inside JSON
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in text
