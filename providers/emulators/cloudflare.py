"""Cloudflare Workers AI, native REST: ``POST /client/v4/accounts/{id}/ai/run/{model}``.

Wire shapes follow docs/providers.md section 1: the v4 envelope on non-stream replies and on
errors; bare ``data: {"response": ...}`` events, a final usage event with ``response: ""`` and
``data: [DONE]`` on streams; 403/5016 on the vision model until ``{"prompt": "agree"}``.

Tools follow the models' JSON schema (cloudflare-docs `src/content/workers-ai-models/
llama-3.2-3b-instruct.json` and `llama-3.2-11b-vision-instruct.json`, the same for both): in the
messages shape, `tools` items are `{name, description, parameters}` or `{type, function: {name,
description, parameters}}`; `parameters` needs `type` and `properties`, and every property a
string `type` and a string `description`; a message's `content` is a string. The output schema
adds `tool_calls: [{"name", "arguments": {...}}]` beside `response`. The "model" calls the first
tool when the last turn is the user's, filling each parameter from the user's text (an enum's
first value, 1 for a number, true for a boolean), and answers in words after a `tool` turn
(echoing the tool's result). In a stream the calls arrive in one event before the usage event
(`{"response": "", "tool_calls": [...]}`): the documented output only shows the non-stream
object; Cloudflare's own AI SDK provider reads top-level `tool_calls` in stream events
(UNCONFIRMED in the vendor's reference).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from providers.emulators.answer import Answer, build_answer, count_tokens, snippet
from providers.emulators.common import (
    Handled,
    NotJson,
    Options,
    bearer_matches,
    is_int,
    is_number,
    make_plan,
    parse_body,
    retry_after_header,
    try_parse,
)
from providers.emulators.faults import Fault, Plan
from providers.emulators.http import HttpRequest
from providers.emulators.state import EmulatorState, RecordedRequest
from providers.emulators.stream import (
    Frame,
    FullReply,
    Reply,
    StreamReply,
    dumps,
    json_frame,
    json_reply,
)

VENDOR = "cloudflare"
PATH = re.compile(r"^/client/v4/accounts/([^/]+)/ai/run/(.+)$")
VISION_MODEL = "@cf/meta/llama-3.2-11b-vision-instruct"
MODELS = frozenset(
    {"@cf/meta/llama-3.2-3b-instruct", "@cf/meta/llama-3.1-8b-instruct", VISION_MODEL}
)
ROLES = frozenset({"user", "assistant", "system", "tool"})
AGREE_REPLY = "Thank you for agreeing to this model's terms. You may now use the model."
LICENCE_MESSAGE = (
    "5016: Prior to using this model, you must submit the prompt 'agree'. By submitting "
    "'agree', you hereby agree to the Meta Llama 3.2 Community License and Acceptable Use "
    "Policy."
)
MAX_PROMPT_CHARS = 131072
IMAGE_TOKENS = 6  # a stable stand-in for what an image adds to prompt_tokens
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.ASCII)
_PAD = "a7Kq9ZrT2mXw4bNc8LpV1sJd6FgH3yQe5uYo0iRt"

MESSAGES: dict[int, str] = {
    3040: "Capacity temporarily exceeded, please try again.",
    3036: (
        "You have used up your daily free allocation of 10,000 neurons. Please upgrade to "
        "Cloudflare's Workers Paid plan if you would like to continue usage."
    ),
    # 4006 was observed with the same meaning as 3036; its exact text is UNCONFIRMED.
    4006: (
        "you have used up your daily free allocation of 10,000 neurons, please upgrade to "
        "Cloudflare's Workers Paid plan if you would like to continue usage."
    ),
    # No 5xx code is documented; 3043 and its text are UNCONFIRMED emulator choices.
    3043: "AiError: AiError: Internal server error",
    10000: "Authentication error",
    3007: "Request timeout",
    # Content filtering mid-stream is UNCONFIRMED for Workers AI; the emulator sends an
    # in-band `errors` event with code 3030 (an emulator choice, not a documented code).
    3030: "AiError: Output blocked by content moderation (emulated)",
}
STATUS_FOR_CODE: dict[int, int] = {
    3040: 429,
    3036: 429,
    4006: 429,
    10000: 401,
    5016: 403,
    3007: 408,
    3046: 408,
    3008: 408,
    3030: 400,
    5006: 400,
    5007: 400,
}


def envelope_error(
    status: int, code: int, message: str, headers: Sequence[tuple[str, str]] = ()
) -> FullReply:
    body = {
        "result": None,
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
    }
    return json_reply(status, body, headers)


def _fault_error(fault: Fault, default_code: int, headers: list[tuple[str, str]]) -> FullReply:
    code = fault.integer("code", default_code)
    status = fault.integer("status", STATUS_FOR_CODE.get(code, 500))
    message = fault.text("message", MESSAGES.get(code, f"AiError: emulated error {code}"))
    return envelope_error(status, code, message, [*headers, *retry_after_header(fault)])


class CloudflareHandler:
    vendor = VENDOR

    def __init__(self, state: EmulatorState, options: Options) -> None:
        self.state = state
        self.options = options

    async def handle(
        self,
        req: HttpRequest,
        rec: RecordedRequest,
        scripted: Sequence[Fault],
        account: str,
        model: str,
    ) -> Handled:
        body = try_parse(req.body)
        plan = make_plan(self.state, rec, VENDOR, scripted, last_user_text(body))
        return self._respond(req, rec, plan, account, model), plan

    def _respond(
        self, req: HttpRequest, rec: RecordedRequest, plan: Plan, account: str, model: str
    ) -> Reply:
        headers = [("cf-ray", f"{secrets.token_hex(8)}-EMU"), ("cf-ai-req-id", str(uuid.uuid4()))]
        refusal = self._refusal(req, plan, account, headers)
        if refusal is not None:
            return refusal
        try:
            body = parse_body(req.body)
        except NotJson:
            if not req.body.strip():
                return envelope_error(
                    400, 3003, "Request is missing headers or body: body", headers
                )
            return envelope_error(
                400, 5006, "AiError: Bad input: Request body is not valid json", headers
            )
        if model not in MODELS:
            return envelope_error(400, 5007, f"No such model {model} or task", headers)
        problem, images = validate(body, model)
        if problem:
            return envelope_error(400, 5006, f"AiError: Bad input: Error: {problem}", headers)
        if images is None:
            return envelope_error(400, 5004, "Invalid data type for base64 input: string", headers)
        self.state.update(rec, image_bytes=images)
        if model == VISION_MODEL:
            gate = self._licence_gate(body, account, headers)
            if gate is not None:
                return gate
        max_tokens = body.get("max_tokens") if is_int(body.get("max_tokens")) else None
        calls = tool_calls_for(body)
        answer = build_answer(answer_source(body), plan, max_tokens)
        if calls:
            answer = Answer((), False)
        prompt_tokens = count_tokens(all_text(body)) + IMAGE_TOKENS * len(images)
        if body.get("stream") is True:
            frames = _frames(answer, plan, prompt_tokens, self.options.timestamps, model, calls)
            return StreamReply(200, [("Content-Type", "text/event-stream"), *headers], frames)
        return self._full(answer, plan, prompt_tokens, headers, calls)

    def _refusal(
        self, req: HttpRequest, plan: Plan, account: str, headers: list[tuple[str, str]]
    ) -> FullReply | None:
        """Method, credentials and before-faults, in the order the real API checks them."""
        creds = self.options.credentials
        if req.method != "POST":
            # UNCONFIRMED code/text for a wrong method on ai/run.
            return envelope_error(405, 10405, "Method not allowed", headers)
        if plan.before is not None and plan.before.kind == "auth-before":
            return _fault_error(plan.before, 10000, headers)
        if not bearer_matches(req, creds.cloudflare_api_token):
            return envelope_error(401, 10000, "Authentication error", headers)
        if account != creds.cloudflare_account_id:
            # Observed for an account id the token does not own (providers.md 1.4).
            return envelope_error(
                400, 7003, f"Could not route to /client/v4/accounts/{account}/ai/run, perhaps "
                "your object identifier is invalid?", headers)
        if plan.before is not None:
            defaults = {"quota-before": 4006, "free-tier-before": 3036, "500-before": 3043}
            return _fault_error(plan.before, defaults.get(plan.before.kind, 3040), headers)
        return None

    def _licence_gate(
        self, body: dict[str, Any], account: str, headers: list[tuple[str, str]]
    ) -> FullReply | None:
        """The Meta licence: 403/5016 until the account sends ``{"prompt": "agree"}``."""
        prompt = body.get("prompt")
        if isinstance(prompt, str) and prompt.strip().lower() == "agree":
            self.state.set_agreed(account, True)
            return json_reply(200, _success({"response": AGREE_REPLY}), headers)
        if not self.state.agreed(account):
            return envelope_error(403, 5016, LICENCE_MESSAGE, headers)
        return None

    def _full(
        self, answer: Answer, plan: Plan, prompt_tokens: int, headers: list[tuple[str, str]],
        calls: list[dict[str, Any]],
    ) -> FullReply:
        delay = plan.generation_delay(len(answer.tokens))
        if plan.after is not None:
            default = 3030 if plan.after.kind == "content-filter-after" else 3040
            reply = _fault_error(plan.after, default, headers)
            reply.delay = delay
            return reply
        result: dict[str, Any] = {"response": answer.text, "usage": _usage(prompt_tokens, answer)}
        if calls:
            result["tool_calls"] = calls
            result["usage"] = _usage(prompt_tokens, answer, _call_tokens(calls))
        if plan.unknown_fields:
            result["emu_unknown"] = {"nested": [1, "x"]}
        return json_reply(200, _success(result), headers, delay=delay, answer=True)


def _success(result: dict[str, Any]) -> dict[str, Any]:
    return {"result": result, "success": True, "errors": [], "messages": []}


def _usage(prompt_tokens: int, answer: Answer, completion: int | None = None) -> dict[str, int]:
    done = len(answer.tokens) if completion is None else completion
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": done,
        "total_tokens": prompt_tokens + done,
    }


def _padding(index: int) -> str:
    """The side-channel padding value: varying length, deterministic per position."""
    return _PAD[: 1 + (index * 7) % len(_PAD)]


def _error_frame(lead: bytes, fault: Fault, default_code: int) -> Frame:
    code = fault.integer("code", default_code)
    message = fault.text("message", MESSAGES.get(code, f"AiError: emulated error {code}"))
    return Frame(
        lead + dumps({"errors": [{"code": code, "message": message}]}) + b"\n\n", paced=True
    )


def _call_tokens(calls: list[dict[str, Any]]) -> int:
    return count_tokens(dumps(calls).decode())


def _frames(
    answer: Answer, plan: Plan, prompt_tokens: int, stamp: bool, model: str,
    calls: list[dict[str, Any]] | None = None,
) -> Iterator[Frame]:
    lead = plan.data_prefix
    after = plan.after
    after_code = 3030 if after is not None and after.kind == "content-filter-after" else 3040
    if plan.unknown_fields:
        unknown = dumps({"model": model, "emu_unknown": True})
        yield Frame(b"event: emu-metadata\n" + lead + unknown + b"\n\n")
    for index, token in enumerate(answer.tokens):
        if after is not None and index == plan.after_n:
            yield _error_frame(lead, after, after_code)
            return
        obj: dict[str, Any] = {"response": token}
        if index % 3 != 1:  # Cloudflare pads some events, not necessarily all
            obj["p"] = _padding(index)
        if plan.unknown_fields:
            obj["emu_unknown"] = {"index": index, "nested": [1, "x"]}
        yield json_frame(lead, obj, b"\n\n", stamp=stamp, paced=True, adds=token)
    if after is not None:
        yield _error_frame(lead, after, after_code)
        return
    if calls:
        yield Frame(lead + dumps({"response": "", "tool_calls": calls, "p": _padding(1)})
                    + b"\n\n", paced=True)
    if plan.no_terminator:
        return
    usage: dict[str, Any] = _usage(prompt_tokens, answer,
                                   _call_tokens(calls) if calls else None)
    if plan.unknown_fields:
        usage |= {"neurons": 1.25, "prompt_tokens_details": {"cached_tokens": 0}}
    yield Frame(lead + dumps({"response": "", "usage": usage}) + b"\n\n")
    yield Frame(lead + b"[DONE]\n\n")


# --- request shape ------------------------------------------------------------------------
def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def last_user_text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    if isinstance(body.get("prompt"), str):
        return str(body["prompt"])
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
    return ""


def _last_turn(body: Any) -> dict[str, Any] | None:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return None
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") != "system"]
    return turns[-1] if turns else None


def answer_source(body: Any) -> str:
    """What the answer echoes: the tool's result after a `tool` turn, else the user's text."""
    last = _last_turn(body)
    if last is not None and last.get("role") == "tool":
        return "Tool said: " + _content_text(last.get("content"))
    return last_user_text(body)


def _tool_function(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function")
    return function if isinstance(function, dict) else tool


def _argument(spec: dict[str, Any], user_text: str) -> Any:
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = spec.get("type")
    if kind in ("number", "integer"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return [snippet(user_text)]
    if kind == "object":
        return {}
    return snippet(user_text)


def tool_calls_for(body: Any) -> list[dict[str, Any]]:
    """The calls the "model" makes: the first tool, when the last turn is the user's."""
    tools = body.get("tools") if isinstance(body, dict) and "messages" in body else None
    last = _last_turn(body)
    if not tools or last is None or last.get("role") != "user":
        return []
    function = _tool_function(tools[0])
    user_text = last_user_text(body)
    properties = function["parameters"]["properties"]
    arguments = {name: _argument(spec, user_text) for name, spec in properties.items()}
    return [{"name": function["name"], "arguments": arguments}]


def all_text(body: dict[str, Any]) -> str:
    if isinstance(body.get("prompt"), str):
        return str(body["prompt"])
    return " ".join(
        _content_text(m.get("content")) for m in body.get("messages", []) if isinstance(m, dict)
    )


_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0, 5),
    "top_p": (0, 2),
    "repetition_penalty": (0, 2),
    "frequency_penalty": (0, 2),
    "presence_penalty": (0, 2),
}


def validate(body: Any, model: str) -> tuple[str | None, list[int] | None]:
    """(schema problem, image byte counts); image counts None means undecodable base64."""
    if not isinstance(body, dict):
        return "Type mismatch of '/', 'array' not in 'object'", []
    has_prompt, has_messages = "prompt" in body, "messages" in body
    if has_prompt == has_messages:
        return f"oneOf at '/' not met, {2 if has_prompt else 0} matches", []
    problem = _check_prompt(body["prompt"]) if has_prompt else None
    images: list[int] = []
    if has_messages:
        problem = _check_messages(body["messages"], model == VISION_MODEL, images)
    if has_messages and "tools" in body:
        problem = problem or _check_tools(body["tools"])
    problem = problem or _check_sampling(body)
    if problem:
        return problem, []
    if "image" in body:
        if model != VISION_MODEL:
            # UNCONFIRMED whether the text model rejects or ignores `image`; rejecting catches
            # a client routing images to the wrong model.
            return "additionalProperties 'image' not allowed", []
        size = _image_size(body["image"])
        if isinstance(size, str):
            return size, []
        if size is None:
            return None, None
        images.insert(0, size)
    return None, images


def _check_prompt(prompt: Any) -> str | None:
    if not isinstance(prompt, str):
        return f"Type mismatch of '/prompt', '{type(prompt).__name__}' not in 'string'"
    if not 1 <= len(prompt) <= MAX_PROMPT_CHARS:
        return f"String length of '/prompt' not in 1..{MAX_PROMPT_CHARS}"
    return None


def _check_messages(messages: Any, vision: bool, images: list[int]) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "Type mismatch of '/messages', expected a non-empty 'array'"
    for index, message in enumerate(messages):
        where = f"/messages/{index}"
        if not isinstance(message, dict):
            return f"Type mismatch of '{where}', expected 'object'"
        if message.get("role") not in ROLES:
            return f"Value of '{where}/role' not in {sorted(ROLES)}"
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not (vision and isinstance(content, list)):
            return f"Type mismatch of '{where}/content', 'array' not in 'string'"
        problem = _check_parts(content, where, images)
        if problem:
            return problem
    return None


def _check_tools(tools: Any) -> str | None:
    if not isinstance(tools, list):
        return "Type mismatch of '/tools', expected 'array'"
    for index, tool in enumerate(tools):
        where = f"/tools/{index}"
        if not isinstance(tool, dict):
            return f"Type mismatch of '{where}', expected 'object'"
        nested = "function" in tool or "type" in tool
        function: Any = tool.get("function") if nested else tool
        if nested:
            if not isinstance(tool.get("type"), str):
                return f"oneOf at '{where}' not met, 0 matches: 'type' is required"
            if not isinstance(function, dict):
                return f"oneOf at '{where}' not met, 0 matches: 'function' is required"
            where += "/function"
        problem = _check_function(function, where)
        if problem:
            return f"oneOf at '/tools/{index}' not met, 0 matches: {problem}"
    return None


def _check_function(function: dict[str, Any], where: str) -> str | None:
    for name in ("name", "description"):
        if not isinstance(function.get(name), str):
            return f"'{where}/{name}' is required and must be a 'string'"
    parameters = function.get("parameters")
    if not isinstance(parameters, dict):
        return f"'{where}/parameters' is required and must be an 'object'"
    if not isinstance(parameters.get("type"), str):
        return f"'{where}/parameters/type' is required and must be a 'string'"
    properties = parameters.get("properties")
    if not isinstance(properties, dict):
        return f"'{where}/parameters/properties' is required and must be an 'object'"
    required = parameters.get("required", [])
    if not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        return f"Type mismatch of '{where}/parameters/required', expected 'array' of 'string'"
    for name, spec in properties.items():
        here = f"{where}/parameters/properties/{name}"
        if not isinstance(spec, dict):
            return f"Type mismatch of '{here}', expected 'object'"
        for key in ("type", "description"):
            if not isinstance(spec.get(key), str):
                return f"'{here}/{key}' is required and must be a 'string'"
    return None


def _check_parts(parts: list[Any], where: str, images: list[int]) -> str | None:
    for index, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        image_url = part.get("image_url") if kind == "image_url" else None
        url = image_url.get("url") if isinstance(image_url, dict) else None
        if isinstance(url, str) and _DATA_URL.match(url):
            size = _data_url_size(url)
            if size is None:
                return f"'{where}/content/{index}/image_url/url' is not valid base64"
            images.append(size)
            continue
        return f"oneOf at '{where}/content/{index}' not met, 0 matches"
    return None


def _check_sampling(body: dict[str, Any]) -> str | None:
    for name in ("stream", "raw"):
        if name in body and not isinstance(body[name], bool):
            return f"Type mismatch of '/{name}', expected 'boolean'"
    if "max_tokens" in body and not (is_int(body["max_tokens"]) and body["max_tokens"] >= 1):
        return "Type mismatch of '/max_tokens', expected a positive 'integer'"
    for name, (low, high) in _RANGES.items():
        if name in body and not (is_number(body[name]) and low <= body[name] <= high):
            return f"Value of '/{name}' not in {low}..{high}"
    if "top_k" in body and not (is_int(body["top_k"]) and 1 <= body["top_k"] <= 50):
        return "Value of '/top_k' not in 1..50"
    if "seed" in body and not (is_int(body["seed"]) and 1 <= body["seed"] <= 9999999999):
        return "Value of '/seed' not in 1..9999999999"
    return None


def _image_size(image: Any) -> int | str | None:
    """Byte count of a top-level `image`; a str is a schema problem; None is bad base64."""
    if isinstance(image, list):
        if not image:
            return "Array '/image' is empty"
        for index, value in enumerate(image):
            if not (is_int(value) and 0 <= value <= 255):
                return f"Value of '/image/{index}' is not an integer in 0..255"
        return len(image)
    if isinstance(image, str):
        return _data_url_size(image)
    return f"Type mismatch of '/image': '{type(image).__name__}' not in 'array','binary'"


def _data_url_size(value: str) -> int | None:
    """Decoded size of a data URL or bare base64 string; None when it does not decode."""
    payload = value.split(",", 1)[1] if _DATA_URL.match(value) else value
    try:
        return len(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError):
        return None
