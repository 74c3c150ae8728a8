"""JSON-schema constraints of the request models that the server enforces at run time (check_supported,
the chat encoder, the engine), published with the fields in /openapi.json so that generated clients
and fuzzers send what is accepted. Bounds known only at run time (vocabulary size, max_model_len,
model name) are added by server/openapi.py. Validation itself is unchanged: these only describe it."""

from __future__ import annotations

from typing import Any

EFFORTS = ("none", "minimal", "low", "medium", "high", "max", "xhigh")
_TEXT_PARTS = {"type": "array", "items": {"type": "object", "required": ["type", "text"],
                                          "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}


def _content(min_length: int = 0) -> dict[str, Any]:
    return {"anyOf": [{"type": "string", "minLength": min_length}, {**_TEXT_PARTS, "minItems": min_length}]}


def message_variants(schema: dict[str, Any]) -> None:
    """One variant per role, with the fields that role needs (a tool result names its call, a
    developer message is not empty, assistant tool calls are function calls)."""
    call = {"type": "object", "required": ["type", "function"], "properties": {
        "id": {"type": "string"}, "type": {"const": "function"},
        "function": {"type": "object", "required": ["name", "arguments"], "properties": {
            "name": {"type": "string", "minLength": 1}, "arguments": {"type": "string"}}}}}
    nullable = {"type": ["string", "null"]}
    schema.clear()
    schema.update({"title": "ChatMessage", "anyOf": [
        {"type": "object", "required": ["role", "content"],
         "properties": {"role": {"const": "system"}, "content": _content(), "name": {"type": "string"}}},
        {"type": "object", "required": ["role", "content"],
         "properties": {"role": {"const": "developer"}, "content": _content(1), "name": {"type": "string"}}},
        {"type": "object", "required": ["role", "content"],
         "properties": {"role": {"const": "user"}, "content": _content(), "name": {"type": "string"}}},
        {"type": "object", "required": ["role"],
         "properties": {"role": {"const": "assistant"}, "content": {"anyOf": [_content(), {"type": "null"}]},
                        "name": {"type": "string"}, "reasoning_content": nullable, "reasoning": nullable,
                        "tool_calls": {"type": "array", "items": call}}},
        {"type": "object", "required": ["role", "tool_call_id", "content"],
         "properties": {"role": {"const": "tool"}, "tool_call_id": {"type": "string", "minLength": 1},
                        "content": _content()}},
    ]})


def prompt_or_messages(schema: dict[str, Any]) -> None:
    """/tokenize takes exactly one of prompt and messages."""
    schema["anyOf"] = [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}}}]


THINKING = {"properties": {"type": {"enum": ["enabled", "disabled"]},
                           "budget_tokens": {"type": "integer", "minimum": 1}},
            "required": ["type"]}
TEMPLATE_KWARGS = {"properties": {"thinking": {"type": "boolean"}, "enable_thinking": {"type": "boolean"},
                                  "reasoning_effort": {"enum": list(EFFORTS)}, "drop_thinking": {"type": "boolean"}},
                   "additionalProperties": False}


def doc(**constraints: Any) -> Any:
    """`Field(..., **doc(minItems=1))`: constraints published in the field's schema only."""
    return {"json_schema_extra": constraints}
