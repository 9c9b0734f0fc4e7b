"""OpenAI's ``response_format`` as the JSON schema the engine constrains sampling with."""

from __future__ import annotations

from typing import Any

from orchestr.services.param_errors import ParamError


class ResponseFormatError(ParamError):
    """A ``response_format`` the client got wrong; ``param`` names the field."""


def guided_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text`` (or none): None; ``json_object``: any JSON object; ``json_schema``: its schema."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name", ""), str):
            raise ResponseFormatError("json_schema must be an object with a name and a schema",
                                      "response_format.json_schema")
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise ResponseFormatError("json_schema.schema must be a JSON schema object",
                                      "response_format.json_schema.schema")
        return schema
    raise ResponseFormatError(f"response_format.type must be text, json_object or json_schema, not {kind!r}",
                              "response_format.type")
