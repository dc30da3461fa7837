"""Tool calls through /v1 (docs/api.md "Tool calls"): OpenAI's `tools`, `tool_choice`, `tool`
turns and assistant `tool_calls`, read and checked here; the model's calls given back in
OpenAI's shape, whole or as stream deltas.

What reaches a client (providers/base.py `Tool`, `ToolCall`, `Message.tool_calls`) is
vendor-neutral; the client of a vendor that accepts tools (catalogue.TOOL_KINDS) translates it.
A definition the vendor could not take is refused here, before anything is charged, with a
message naming the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from conversations.api.errors import ApiError, bad
from providers.base import Tool, ToolCall

MAX_TOOLS = 64
MAX_TOOLS_BYTES = 64 * 1024  # every definition together, as JSON
MAX_DESCRIPTION_CHARS = 4000
MAX_PROPERTIES = 100
MAX_ARGUMENTS_CHARS = 32 * 1024
MAX_TOOL_CALLS = 32  # in one assistant turn
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
CALL_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
CHOICES = ("auto", "none")
# Fields that only mean something with tools; with `tools` absent they keep their old rules
# (requests.IGNORABLE: `tools: []`, `tool_choice: "auto"` are harmless for any model).
TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")


@dataclass(frozen=True)
class ToolFields:
    tools: tuple[Tool, ...]
    choice: str  # auto | none

    @property
    def sent(self) -> tuple[Tool, ...]:
        """What the model is offered: nothing with tool_choice "none"."""
        return () if self.choice == "none" else self.tools


# --- the request's tools ------------------------------------------------------------------------
def wants_tools(body: dict[str, Any]) -> bool:
    return isinstance(body.get("tools"), list) and bool(body["tools"])


def parse_tool_fields(body: dict[str, Any]) -> ToolFields:
    raw = body.get("tools")
    if not isinstance(raw, list):
        raise bad("invalid_type", "'tools' must be a list of {\"type\": \"function\", "
                  "\"function\": {...}} objects.", "tools")
    if len(raw) > MAX_TOOLS:
        raise bad("too_many_tools", f"At most {MAX_TOOLS} tools per request.", "tools")
    if len(json.dumps(raw, ensure_ascii=False)) > MAX_TOOLS_BYTES:
        raise bad("tools_too_large", f"The tool definitions may have at most "
                  f"{MAX_TOOLS_BYTES // 1024} KB of JSON together.", "tools")
    tools = tuple(_tool(item, f"tools[{index}]") for index, item in enumerate(raw))
    names = [t.name for t in tools]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise bad("invalid_value", f"Two tools are named {duplicate!r}; names must be unique.",
                  "tools")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad("invalid_type", "'parallel_tool_calls' must be true or false.",
                  "parallel_tool_calls")
    return ToolFields(tools=tools, choice=_choice(body.get("tool_choice")))


def _choice(value: Any) -> str:
    if value is None:
        return "auto"
    if value in CHOICES:
        return str(value)
    if value == "required" or isinstance(value, dict):
        raise bad("unsupported_parameter",
                  f"'tool_choice' = {json.dumps(value)[:80]} is not supported: these models "
                  "decide themselves whether to call a tool. Use \"auto\" or \"none\".",
                  "tool_choice")
    raise bad("invalid_value", "'tool_choice' must be \"auto\" or \"none\".", "tool_choice")


def _tool(item: Any, where: str) -> Tool:
    if not isinstance(item, dict) or item.get("type") != "function" or not isinstance(
            item.get("function"), dict):
        raise bad("invalid_value", "Each tool must be {\"type\": \"function\", \"function\": "
                  "{\"name\": ..., \"parameters\": {...}}}.", where)
    function = item["function"]
    name = function.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise bad("invalid_value", "A function name must be 1-64 letters, digits, '_' or "
                  "'-'.", f"{where}.function.name")
    description = function.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        raise bad("invalid_value", f"A function's description must be text of at most "
                  f"{MAX_DESCRIPTION_CHARS} characters.", f"{where}.function.description")
    if function.get("strict") not in (None, False):
        raise bad("unsupported_parameter", "'strict' function calling is not supported: the "
                  "arguments a model writes are not checked against the schema.",
                  f"{where}.function.strict")
    parameters = _parameters(function.get("parameters"), f"{where}.function.parameters")
    return Tool(name=name, description=description, parameters=parameters)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    """A JSON-schema object of named parameters, each with one `type` (what the Cloudflare
    models' schema takes; a missing description is filled in by the client)."""
    if value is None:
        return {"type": "object", "properties": {}}
    if not isinstance(value, dict):
        raise bad("invalid_value", "'parameters' must be a JSON schema object.", where)
    if value.get("type", "object") != "object":
        raise bad("invalid_value", "'parameters' must be a schema of \"type\": \"object\".",
                  f"{where}.type")
    properties = value.get("properties", {})
    if not isinstance(properties, dict) or len(properties) > MAX_PROPERTIES:
        raise bad("invalid_value", f"'properties' must be an object of at most "
                  f"{MAX_PROPERTIES} named parameters.", f"{where}.properties")
    for key, spec in properties.items():
        here = f"{where}.properties.{key[:64]}"
        if not NAME.fullmatch(key):
            raise bad("invalid_value", "A parameter name must be 1-64 letters, digits, '_' "
                      "or '-'.", here)
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise bad("invalid_value", "Each parameter needs a single \"type\" (\"string\", "
                      "\"number\", \"integer\", \"boolean\", \"array\" or \"object\"): these "
                      "models do not take anyOf or a list of types.", here)
        if "description" in spec and not isinstance(spec["description"], str):
            raise bad("invalid_value", "A parameter's description must be text.", here)
    required = value.get("required", [])
    if not isinstance(required, list) or any(r not in properties for r in required):
        raise bad("invalid_value", "'required' must list names found in 'properties'.",
                  f"{where}.required")
    return {**value, "type": "object", "properties": properties, "required": required}


# --- tool turns in the history ------------------------------------------------------------------
def assistant_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    """An assistant turn's `tool_calls`, as a client sends them back."""
    if not isinstance(value, list) or len(value) > MAX_TOOL_CALLS:
        raise bad("invalid_type", f"'tool_calls' must be a list of at most {MAX_TOOL_CALLS} "
                  "calls.", f"{where}.tool_calls")
    calls = []
    for index, item in enumerate(value):
        here = f"{where}.tool_calls[{index}]"
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or item.get("type", "function") != "function":
            raise bad("invalid_value", "A tool call must be {\"id\": ..., \"type\": "
                      "\"function\", \"function\": {\"name\": ..., \"arguments\": \"...\"}}.",
                      here)
        call_id, name, arguments = item.get("id"), function.get("name"), function.get(
            "arguments", "")
        if not isinstance(call_id, str) or not CALL_ID.fullmatch(call_id):
            raise bad("invalid_value", "A tool call needs its 'id' (as the model gave it).",
                      f"{here}.id")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise bad("invalid_value", "A tool call needs the function's 'name'.",
                      f"{here}.function.name")
        if not isinstance(arguments, str) or len(arguments) > MAX_ARGUMENTS_CHARS:
            raise bad("invalid_value", f"'arguments' must be JSON text of at most "
                      f"{MAX_ARGUMENTS_CHARS} characters.", f"{here}.function.arguments")
        calls.append(ToolCall(id=call_id, name=name, arguments=arguments))
    return tuple(calls)


def tool_call_id(item: dict[str, Any], where: str, open_calls: set[str]) -> str:
    """A `tool` turn's call id: it must answer a call of the assistant turn before it."""
    value = item.get("tool_call_id")
    if not isinstance(value, str) or not value:
        raise bad("missing_required_parameter", "A tool message needs 'tool_call_id'.",
                  f"{where}.tool_call_id")
    if value not in open_calls:
        raise bad("invalid_value", "A tool message must answer a call of the assistant "
                  f"message before it; no open call has the id {value[:128]!r}.",
                  f"{where}.tool_call_id")
    return value


def unsupported(model: Any, param: str) -> ApiError:
    return bad("unsupported_parameter",
               f"'{param}' is not supported by {model.slug}: this model does not accept tools. "
               "Choose a model that does; an administrator marks the models whose vendor "
               "takes tools (\"accepts tools\").", param)


# --- the model's calls, in OpenAI's shape -------------------------------------------------------
def message_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def delta_calls(calls: tuple[ToolCall, ...]) -> list[list[dict[str, Any]]]:
    """Stream deltas, in order: per call its id, type and name (arguments ""), then the
    arguments. The openai package's stream helpers concatenate them by `index`."""
    deltas: list[list[dict[str, Any]]] = []
    for index, call in enumerate(calls):
        deltas.append([{"index": index, "id": call.id, "type": "function",
                        "function": {"name": call.name, "arguments": ""}}])
        deltas.append([{"index": index, "function": {"arguments": call.arguments}}])
    return deltas
