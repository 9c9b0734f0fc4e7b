"""Function calling in OpenAI's shapes: checking ``tools``/``tool_choice``, the JSON schema that
constrains a forced call (``required`` or a named function), and parsers that find calls in what a
model wrote under ``auto``, one per chat-template family (Hermes/ChatML ``<tool_call>``, Llama-3.x
JSON, Mistral ``[TOOL_CALLS]``)."""

from __future__ import annotations

import json
import re
from typing import Any

from orchestr.engine.templates import HERMES, LLAMA3, MISTRAL, template_family  # noqa: F401
from orchestr.protocol import ToolCall, ToolCallFunction
from orchestr.services.param_errors import ParamError


class ToolSpecError(ParamError):
    """``tools``/``tool_choice`` a client got wrong; ``param`` names the field."""


def functions_of(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """name -> function definition; checks OpenAI's shape."""
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ToolSpecError("only tools of type 'function' with a 'function' object are supported", f"tools.{i}")
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ToolSpecError("function.name must be 1-64 letters, digits, '_' or '-'", f"tools.{i}.function.name")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ToolSpecError("function.parameters must be a JSON schema object", f"tools.{i}.function.parameters")
        out[name] = {**fn, "parameters": params}
    return out


def forced_names(tools: list[dict] | None, tool_choice: Any) -> list[str] | None:
    """The functions a call must be made to (``required``: any; named: that one), or None when the
    model may answer in text (``auto``, ``none``, no tools)."""
    functions = functions_of(tools)
    if tool_choice is None:
        tool_choice = "auto" if functions else "none"
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ToolSpecError("tool_choice must be 'none', 'auto', 'required' or a named function", "tool_choice")
        if tool_choice != "none" and not functions:
            raise ToolSpecError(f"tool_choice {tool_choice!r} needs tools", "tool_choice")
        return list(functions) if tool_choice == "required" else None
    name = (tool_choice or {}).get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function" or not name:
        raise ToolSpecError("a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                            "tool_choice")
    if name not in functions:
        raise ToolSpecError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    return [name]


def forced_call_schema(tools: list[dict], names: list[str], parallel: bool) -> dict[str, Any]:
    """A JSON array of ``{"name", "arguments"}`` calls to ``names``, each valid against its
    function's parameters: what a forced call is generated under."""
    functions = functions_of(tools)
    variants = [{"type": "object",
                 "properties": {"name": {"const": n}, "arguments": functions[n]["parameters"]},
                 "required": ["name", "arguments"], "additionalProperties": False} for n in names]
    item = variants[0] if len(variants) == 1 else {"anyOf": variants}
    # parallel: at most as many calls as functions offered, so a forced answer always ends
    return {"type": "array", "items": item, "minItems": 1, "maxItems": len(names) if parallel else 1}


def calls_from_forced(text: str) -> list[ToolCall]:
    """The calls in a forced-call answer (JSON from :func:`forced_call_schema`)."""
    return [_call(c["name"], c.get("arguments", {})) for c in json.loads(text)]


def _call(name: str, arguments: Any) -> ToolCall:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(function=ToolCallFunction(name=name, arguments=args))


# --------------------------------------------------------------------------- auto: parsers per template family


def _json_values(text: str) -> list[Any]:
    """Consecutive JSON values in ``text`` (separated by whitespace, ';' or ',')."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while i < len(text):
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            break
        value, i = dec.raw_decode(text, i)
        out.append(value)
    return out


def _as_calls(values: list[Any], names: set[str]) -> list[ToolCall] | None:
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, list) else [v])
    calls = []
    for v in flat:
        if not isinstance(v, dict) or v.get("name") not in names:
            return None
        calls.append(_call(v["name"], v.get("arguments", v.get("parameters", {}))))
    return calls or None


def parse_tool_calls(text: str, family: str | None, tools: list[dict]) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of an ``auto`` answer: the calls a template family's syntax holds, to known
    functions; anything unparseable stays content (the model answered in text)."""
    names = set(functions_of(tools))
    calls: list[ToolCall] | None = None
    content: str | None = text
    try:
        if family == HERMES and "<tool_call>" in text:
            bodies = re.findall(r"<tool_call>(.*?)(?:</tool_call>|$)", text, re.S)
            calls = _as_calls([v for b in bodies for v in _json_values(b.strip())], names)
            content = text[: text.index("<tool_call>")].strip() or None
        elif family == MISTRAL and "[TOOL_CALLS]" in text:
            head, _, body = text.partition("[TOOL_CALLS]")
            calls = _as_calls(_json_values(body.strip()), names)
            content = head.strip() or None
        elif family == LLAMA3:
            body = text.strip().removeprefix("<|python_tag|>").strip()
            if body.startswith("{") or body.startswith("["):
                calls = _as_calls(_json_values(body), names)
                content = None
    except ValueError:
        calls = None
    if not calls:
        return text, []
    return content, calls


def may_start_call(text: str, family: str | None) -> bool:
    """Whether streamed text so far could be (the start of) a tool call: hold it back then."""
    t = text.lstrip()
    markers = {HERMES: ("<tool_call>",), MISTRAL: ("[TOOL_CALLS]",), LLAMA3: ("<|python_tag|>", "{", "[")}
    for m in markers.get(family or "", ()):
        if t.startswith(m) or (len(t) < len(m) and m.startswith(t)):
            return True
        if m in t and family != LLAMA3:
            return True
    return False
