"""Tool calls through /v1: the openai package's weather example against daphne and the
Cloudflare emulator, over real sockets, streaming and not; refusals before anything is charged.

The example is the one from OpenAI's function-calling guide (get_current_weather; the second
request has no `tools`, only the history with the assistant's calls and the tool results).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from conversations.models import UsageRecord
from providers import catalogue
from providers.cloudflare import _Calls
from providers.emulators.answer import build_answer
from providers.emulators.faults import Plan
from providers.models import ModelConfig
from tests.api.test_api_chat import data_url, error_of, user_turn

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "llama-3.2-3b"


@pytest.fixture(autouse=True)
def _tool_flags_as_the_data_migration_sets_them(emulated: Any) -> None:
    """The catalogue's tool flags on every row, as migration 0009 sets them on an installed
    site (a transactional test database is flushed between tests, so no migration data is
    relied upon here)."""
    for spec in catalogue.MODELS:
        ModelConfig.objects.filter(slug=spec["slug"]).update(
            supports_tools=spec.get("supports_tools", False))


def get_current_weather(location: str, unit: str = "fahrenheit") -> str:
    """The example's dummy function: the same weather for every city."""
    return json.dumps({"location": location, "temperature": "22", "unit": unit})


TOOLS: list[dict[str, Any]] = [{
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string",
                             "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}]


def model_calls(emulated: Any) -> list[Any]:
    return [r for r in emulated.requests if r.vendor == "cloudflare" and r.endpoint == "model"]


def run_conversation(api: openai.OpenAI) -> tuple[Any, Any, list[Any]]:
    """OpenAI's example, unchanged but for the model name."""
    messages: list[Any] = [{"role": "user", "content":
                            "What's the weather like in San Francisco, Tokyo, and Paris?"}]
    response = api.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                           tool_choice="auto")
    response_message = response.choices[0].message
    tool_calls = response_message.tool_calls
    assert tool_calls
    available_functions = {"get_current_weather": get_current_weather}
    messages.append(response_message)
    for tool_call in tool_calls:
        function_to_call = available_functions[tool_call.function.name]
        function_args = json.loads(tool_call.function.arguments)
        function_response = function_to_call(location=function_args.get("location"),
                                             unit=function_args.get("unit"))
        messages.append({"tool_call_id": tool_call.id, "role": "tool",
                         "name": tool_call.function.name, "content": function_response})
    second_response = api.chat.completions.create(model=MODEL, messages=messages)
    return response, second_response, messages


def test_the_openai_weather_example_runs_unchanged_against_the_3b_model(
        api: openai.OpenAI, emulated: Any) -> None:
    first, second, _messages = run_conversation(api)

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_current_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["unit"] == "celsius"  # the emulator picks an enum's first value
    assert "San Francisco" in arguments["location"]

    # The vendor saw its own shape: a function tool, every parameter with a description.
    calls = model_calls(emulated)
    assert len(calls) == 2
    sent_tool = calls[0].json["tools"][0]
    assert sent_tool["type"] == "function"
    assert sent_tool["function"]["parameters"]["properties"]["unit"]["description"]
    # The second request: the call as Llama's JSON in an assistant turn, the result as a tool
    # turn, and no tools.
    roles = [m["role"] for m in calls[1].json["messages"]]
    assert roles == ["user", "assistant", "tool"]
    assert "tools" not in calls[1].json
    said = json.loads(calls[1].json["messages"][1]["content"])
    assert said == {"name": "get_current_weather", "parameters": arguments}
    assert json.loads(calls[1].json["messages"][2]["content"])["temperature"] == "22"

    final = second.choices[0]
    assert final.finish_reason == "stop"
    assert final.message.tool_calls is None
    assert final.message.content.startswith("Echo: Tool said:")

    records = list(UsageRecord.objects.order_by("pk"))
    assert [r.source for r in records] == [UsageRecord.Source.API] * 2
    assert all(r.status == "complete" and r.completion_tokens for r in records)
    assert records[0].model.slug == MODEL


def test_a_streamed_tool_call_arrives_as_openai_deltas_and_the_answer_streams_after_it(
        api: openai.OpenAI, emulated: Any) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    stream = api.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                         stream=True, stream_options={"include_usage": True})
    calls: dict[int, dict[str, str]] = {}
    finish = None
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            call["name"] += (piece.function.name or "") if piece.function else ""
            call["arguments"] += (piece.function.arguments or "") if piece.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert usage is not None and usage.completion_tokens > 0
    assert list(calls) == [0]
    call = calls[0]
    assert call["name"] == "get_current_weather"
    assert json.loads(call["arguments"])["location"].startswith("Weather in Paris")

    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": call["id"], "type": "function",
         "function": {"name": call["name"], "arguments": call["arguments"]}}]})
    messages.append({"role": "tool", "tool_call_id": call["id"],
                     "content": get_current_weather("Paris", "celsius")})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in api.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, stream=True) if chunk.choices)
    assert text.startswith("Echo: Tool said:")
    # With tools the vendor is asked for the whole answer (its documented tool-call form),
    # which /v1 still streams to the client.
    last = model_calls(emulated)[-1]
    assert last.json["stream"] is False and "tools" in last.json
    assert text == build_answer(text_of(last.json["messages"][-1]), Plan()).text
    assert UsageRecord.objects.filter(status="complete").count() == 2


def text_of(message: dict[str, Any]) -> str:
    return "Tool said: " + message["content"]


def test_the_vision_model_takes_tools_beside_its_image(api: openai.OpenAI, emulated: Any) -> None:
    response = api.chat.completions.create(
        model="llama-3.2-11b-vision", tools=TOOLS,
        messages=[user_turn("Weather where this photo was taken?", data_url())])
    assert response.choices[0].message.tool_calls[0].function.name == "get_current_weather"
    # The messages shape (it takes tools) with the image as the top-level byte array.
    sent = model_calls(emulated)[-1]
    assert sent.json["messages"][-1]["content"].startswith("Weather where")
    assert isinstance(sent.json["image"], list) and sent.image_bytes


def test_the_client_reads_tool_calls_in_openai_style_pieces_too() -> None:
    """Another form seen from Workers AI (Cloudflare's AI SDK provider reads both): an
    `index`, the name first, the arguments as text in pieces, a null-filled closing piece."""
    calls = _Calls()
    calls.add([{"id": "chatcmpl-tool-1", "index": 0, "type": "function",
                "function": {"name": "get_current_weather", "arguments": ""}}])
    calls.add([{"index": 0, "function": {"arguments": '{"location": "Par'}}])
    calls.add([{"index": 0, "function": {"arguments": 'is"}'}}])
    calls.add([{"id": None, "type": None, "function": {"name": None}}])
    (call,) = calls.done()
    assert call.id == "chatcmpl-tool-1" and call.name == "get_current_weather"
    assert json.loads(call.arguments) == {"location": "Paris"}


def test_tool_choice_none_offers_the_model_no_tools_and_it_answers_in_words(
        api: openai.OpenAI, emulated: Any) -> None:
    response = api.chat.completions.create(
        model=MODEL, tools=TOOLS, tool_choice="none",
        messages=[{"role": "user", "content": "Weather in Oslo?"}])
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.tool_calls is None
    assert "tools" not in model_calls(emulated)[-1].json


def test_an_empty_tools_list_still_changes_nothing_for_a_model_without_tools(
        api: openai.OpenAI, emulated: Any) -> None:
    response = api.chat.completions.create(
        model="llama-3-70b", tools=[], tool_choice="auto",
        messages=[{"role": "user", "content": "Hello"}])
    assert response.choices[0].message.content.startswith("Echo: Hello")


# --- refusals: a clear 400, nothing charged, nothing sent ----------------------------------------
def test_a_model_without_tools_answers_unsupported_parameter_naming_the_model(
        api: openai.OpenAI, emulated: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="llama-3-70b", tools=TOOLS,
                                    messages=[{"role": "user", "content": "Weather?"}])
    error = error_of(caught.value)
    assert error["code"] == "unsupported_parameter" and error["param"] == "tools"
    assert "llama-3-70b" in error["message"]
    # A tool result in the history needs tools as well.
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="llama-3.2-90b-vision", messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_current_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    error = error_of(caught.value)
    assert error["code"] == "unsupported_parameter" and "llama-3.2-90b-vision" in error[
        "message"]
    assert not UsageRecord.objects.exists()
    assert not [r for r in emulated.requests if r.endpoint == "model"]


def with_function(**changes: Any) -> list[dict[str, Any]]:
    function = {**TOOLS[0]["function"], **changes}
    return [{"type": "function", "function": function}]


BAD_REQUESTS = [
    ("a name with a space", {"tools": with_function(name="get weather")},
     "tools[0].function.name"),
    ("a parameter given as anyOf", {"tools": with_function(parameters={
        "type": "object", "properties": {"x": {"anyOf": [{"type": "string"}]}}})},
     "tools[0].function.parameters.properties.x"),
    ("required naming an unknown parameter", {"tools": with_function(parameters={
        "type": "object", "properties": {}, "required": ["city"]})},
     "tools[0].function.parameters.required"),
    ("two tools with one name", {"tools": TOOLS + TOOLS}, "tools"),
    ("too many tools", {"tools": [
        {"type": "function", "function": {"name": f"f{i}"}} for i in range(65)]}, "tools"),
    ("tool_choice required", {"tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
    ("strict schemas", {"tools": with_function(strict=True)}, "tools[0].function.strict"),
    ("a tool result answering no call", {"tools": TOOLS, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "call_x", "content": "sunny"}]},
     "messages[1].tool_call_id"),
]


@pytest.mark.parametrize(("what", "fields", "param"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_a_bad_tool_request_is_refused_with_a_clear_400_and_charges_nothing(
        api: openai.OpenAI, emulated: Any, what: str, fields: dict[str, Any],
        param: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Weather?"}], **fields}
    response = httpx.post(f"{api.base_url}chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {api.api_key}"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert error["message"]
    assert not UsageRecord.objects.exists()
    assert not [r for r in emulated.requests if r.endpoint == "model"]


# --- the emulator: the vendor's tool shapes, from its schema -------------------------------------
def emulator_post(emulated: Any, body: dict[str, Any]) -> httpx.Response:
    creds = emulated.credentials
    url = (f"{emulated.base_urls['cloudflare']}/accounts/{creds.cloudflare_account_id}"
           "/ai/run/@cf/meta/llama-3.2-3b-instruct")
    return httpx.post(url, json=body, timeout=10,
                      headers={"Authorization": f"Bearer {creds.cloudflare_api_token}"})


def test_the_emulator_refuses_a_parameter_without_a_description_as_the_vendor_schema_does(
        emulated: Any) -> None:
    reply = emulator_post(emulated, {"messages": [{"role": "user", "content": "hi"}],
                                     "tools": [TOOLS[0]]})  # `unit` has no description
    assert reply.status_code == 400
    error = reply.json()["errors"][0]
    assert error["code"] == 5006 and "unit/description" in error["message"]


def test_the_emulator_answers_tool_calls_in_the_documented_non_stream_shape(
        emulated: Any) -> None:
    tool = {"name": "get_time", "description": "The time in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "description": "City"}}}}
    reply = emulator_post(emulated, {"messages": [{"role": "user", "content": "time in Rome"}],
                                     "tools": [tool]})
    assert reply.status_code == 200
    result = reply.json()["result"]
    assert result["tool_calls"] == [{"name": "get_time", "arguments": {"city": "time in Rome"}}]
    assert result["usage"]["completion_tokens"] > 0


def test_the_emulator_streams_tool_calls_in_one_event_before_the_usage(emulated: Any) -> None:
    tool = {"type": "function", "function": {
        "name": "get_time", "description": "The time in a city", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "description": "City"}}}}}
    reply = emulator_post(emulated, {"messages": [{"role": "user", "content": "Rome"}],
                                     "tools": [tool], "stream": True})
    events = [line[len("data: "):] for line in reply.text.splitlines()
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    (with_calls,) = [p for p in payloads if "tool_calls" in p]
    assert with_calls["tool_calls"] == [{"name": "get_time", "arguments": {"city": "Rome"}}]
    assert "usage" in payloads[-1] and payloads.index(with_calls) == len(payloads) - 2
