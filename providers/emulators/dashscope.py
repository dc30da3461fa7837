"""Alibaba DashScope, native multimodal-generation (docs/providers.md section 2).

``POST /api/v1/services/aigc/multimodal-generation/generation``; ``X-DashScope-SSE: enable``
selects streaming. Stream events are four lines with no space after the colons
(``id:N``/``event:result``/``:HTTP_STATUS/200``/``data:{...}``), the text is CUMULATIVE,
``finish_reason`` is the string ``"null"`` until the last event, there is no ``[DONE]`` and the
connection closes after the last event. Every user turn must carry an image URL, which the
emulator really fetches (only from loopback hosts).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from providers.emulators.answer import Answer, build_answer, count_tokens
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

VENDOR = "dashscope"
PATH = "/api/v1/services/aigc/multimodal-generation/generation"
MODELS = frozenset({"llama3.2-90b-vision-instruct", "llama3.2-11b-vision"})
SSE_CONTENT_TYPE = "text/event-stream;charset=UTF-8"
IMAGE_TOKENS = 1280  # a stable stand-in for the image part of input_tokens
_DATA_URI = re.compile(r"^data:(image/[\w.+-]+);base64,(.*)$", re.ASCII | re.DOTALL)

MESSAGES: dict[str, str] = {
    "InvalidApiKey": "Invalid API-key provided.",
    "Throttling.RateQuota": "Requests rate limit exceeded, please try again later.",
    "Throttling.AllocationQuota": "Free allocated quota exceeded.",
    "Throttling": "Requests throttling triggered.",
    "InternalError": (
        "An internal error has occured, please try again later or contact service support."
    ),
    "DataInspectionFailed": "Output data may contain inappropriate content.",
    "AllocationQuota.FreeTierOnly": (
        "The free tier of the model has been exhausted. If you wish to continue access the model "
        "on a paid basis, please disable the \"use free tier only\" mode in the management "
        "console."
    ),
    "InvalidParameter": (
        "<400> InternalError.Algo.InvalidParameter: An unknown error occurred due to an "
        "unsupported input format."
    ),
}
SERVICE_UNAVAILABLE = "Service temporarily unavailable, possibly overloaded or not ready."


def status_for(code: str) -> int:
    if code.startswith("Throttling"):
        return 429
    if code == "InvalidApiKey":
        return 401
    if code.startswith(("AccessDenied", "AllocationQuota")):
        return 403
    if code == "ModelNotFound":
        return 404
    if code.startswith("InternalError"):
        return 500
    return 400


class BadRequest(Exception):
    def __init__(self, message: str, code: str = "InvalidParameter") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_reply(
    status: int, code: str, message: str, request_id: str, headers: Sequence[tuple[str, str]] = ()
) -> FullReply:
    body = {"code": code, "message": message, "request_id": request_id}
    return json_reply(status, body, [("x-request-id", request_id), *headers])


def error_frame(event_id: int, status: int, code: str, message: str, request_id: str) -> bytes:
    data = dumps({"code": code, "message": message, "request_id": request_id})
    return b"id:%d\nevent:error\n:HTTP_STATUS/%d\ndata:%b\n\n" % (event_id, status, data)


def _fault_parts(fault: Fault, default_code: str) -> tuple[int, str, str]:
    code = fault.text("code", default_code)
    status = fault.integer("status", status_for(code))
    default_message = SERVICE_UNAVAILABLE if status == 503 else MESSAGES.get(code, code)
    return status, code, fault.text("message", default_message)


class DashScopeHandler:
    vendor = VENDOR

    def __init__(self, state: EmulatorState, options: Options) -> None:
        self.state = state
        self.options = options
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        """One client for all image fetches (a client per fetch costs an SSL context each)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.options.image_fetch_timeout),
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=50),
                trust_env=False,  # never route image fetches through a proxy from the environment
            )
        return self._client

    async def handle(
        self, req: HttpRequest, rec: RecordedRequest, scripted: Sequence[Fault]
    ) -> Handled:
        body = try_parse(req.body)
        plan = make_plan(self.state, rec, VENDOR, scripted, last_user_text(body))
        request_id = str(uuid.uuid4())
        try:
            reply = await self._respond(req, rec, plan, request_id)
        except BadRequest as exc:
            reply = error_reply(status_for(exc.code), exc.code, exc.message, request_id)
        return reply, plan

    async def _respond(
        self, req: HttpRequest, rec: RecordedRequest, plan: Plan, request_id: str
    ) -> Reply:
        if req.method != "POST":
            # UNCONFIRMED code/text for a wrong method.
            return error_reply(405, "MethodNotAllowed", "Method Not Allowed", request_id)
        if plan.before is not None and plan.before.kind == "auth-before":
            return self._before(plan.before, request_id)
        auth = req.headers.get("authorization", "")
        if not auth.strip():
            return error_reply(401, "InvalidApiKey", "No API-key provided.", request_id)
        if not bearer_matches(req, self.options.credentials.dashscope_api_key):
            return error_reply(401, "InvalidApiKey", "Invalid API-key provided.", request_id)
        if plan.before is not None:
            return self._before(plan.before, request_id)
        try:
            body = parse_body(req.body)
        except NotJson:
            raise BadRequest("Request body is not valid JSON.") from None  # UNCONFIRMED text
        messages = validate(body)
        urls = _image_urls(messages)
        self._check_image_count(len(urls))
        parameters = body.get("parameters") or {}
        cap = parameters.get("max_new_tokens") if is_int(parameters.get("max_new_tokens")) else None
        input_tokens = count_tokens(_all_text(messages)) + IMAGE_TOKENS * len(urls)
        _check_context(input_tokens, cap)
        images = await asyncio.gather(*(self._image_size(url) for url in urls))
        self.state.update(rec, image_bytes=list(images))
        answer = build_answer(last_user_text(body), plan, cap)
        if req.headers.get("x-dashscope-sse", "").strip().lower() == "enable":
            frames = _frames(answer, plan, input_tokens, request_id, self.options.timestamps)
            headers = [("Content-Type", SSE_CONTENT_TYPE), ("x-request-id", request_id)]
            return StreamReply(200, headers, frames)
        return _full(answer, plan, input_tokens, request_id)

    def _before(self, fault: Fault, request_id: str) -> Reply:
        kind = fault.kind
        headers = retry_after_header(fault)
        if kind == "dashscope-error-sse-as-json":
            status, code, message = _fault_parts(fault, "InvalidParameter")
            body = error_frame(1, status, code, message, request_id)
            return FullReply(
                status,
                [("Content-Type", "application/json"), ("x-request-id", request_id), *headers],
                body,
            )
        if kind == "dashscope-200-error":
            status, code, message = _fault_parts(fault, "InvalidParameter")
            frame = Frame(error_frame(1, status, code, message, request_id), paced=True)
            return StreamReply(
                200,
                [
                    ("Content-Type", SSE_CONTENT_TYPE),
                    ("x-request-id", request_id),
                    ("x-dashscope-finished", "true"),
                    *headers,
                ],
                iter([frame]),
            )
        default = {
            "auth-before": "InvalidApiKey",
            "429-before": "Throttling.RateQuota",
            "quota-before": "Throttling.AllocationQuota",
            "free-tier-before": "AllocationQuota.FreeTierOnly",
            "500-before": "InternalError",
        }[kind]
        status, code, message = _fault_parts(fault, default)
        return error_reply(status, code, message, request_id, headers)

    async def _image_size(self, url: str) -> int:
        match = _DATA_URI.match(url)
        if match:
            if not self.options.dashscope_accept_data_uri:
                # UNCONFIRMED for the Llama model (see providers.md 2.1); this emulator rejects
                # data URIs unless created with dashscope_accept_data_uri=True.
                raise BadRequest(
                    "<400> InternalError.Algo.InvalidParameter: The image url must be an "
                    "http(s) url; data URIs are not accepted for this model."
                )
            try:
                size = len(base64.b64decode(match.group(2), validate=True))
            except (binascii.Error, ValueError):
                raise BadRequest(
                    "<400> InternalError.Algo.InvalidParameter: Invalid data uri."
                ) from None
            self._check_size(size)
            return size
        return await self._fetch(url)

    def _check_image_count(self, count: int) -> None:
        if count == 0:
            # Seed 002: text-only input is not supported; the request needs an image URL.
            # UNCONFIRMED wording.
            raise BadRequest(
                "<400> InternalError.Algo.InvalidParameter: The input must contain an image url."
            )
        if count > 1 and not self.options.dashscope_multi_image:
            # Seed 002's FAQ: image lists are not supported. UNCONFIRMED code and wording.
            raise BadRequest(
                "<400> InternalError.Algo.InvalidParameter: Only one image is supported per "
                "request."
            )

    def _check_size(self, size: int) -> None:
        if size > self.options.max_image_bytes:
            raise BadRequest(
                "<400> InternalError.Algo.InvalidParameter: Exceeded limit on max bytes per "
                f"image item: {self.options.max_image_bytes}"
            )

    async def _fetch(self, url: str) -> int:
        """GET the image like DashScope would, but only from loopback hosts."""
        client = self._http()
        for _hop in range(4):
            self._check_host(url)
            try:
                size, redirect = await self._get(client, url)
            except httpx.HTTPError:
                # The code seen when Alibaba cannot fetch an image (QwenLM/Qwen-VL#431).
                raise BadRequest(
                    "Download the media resource timed out during the data inspection process.",
                    code="InvalidParameter.DataInspection",
                ) from None
            if redirect is None:
                return size
            url = urljoin(url, redirect)
        raise BadRequest("<400> InternalError.Algo.InvalidParameter: Too many redirects.")

    def _check_host(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or parts.hostname not in self.options.image_hosts:
            raise BadRequest("url error, please check url!")

    async def _get(self, client: httpx.AsyncClient, url: str) -> tuple[int, str | None]:
        async with client.stream("GET", url) as response:
            location = response.headers.get("location")
            if response.is_redirect and location:
                return 0, location
            content_type = response.headers.get("content-type", "")
            if response.status_code != 200 or not content_type.startswith("image/"):
                # An image that cannot be fetched: the download failure's code (UNCONFIRMED
                # that a 4xx from the image host gives the same one as a timeout).
                raise BadRequest(
                    "Download the media resource failed during the data inspection process "
                    f"(HTTP {response.status_code}, content type {content_type or 'none'}).",
                    code="InvalidParameter.DataInspection",
                )
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                self._check_size(size)
            return size, None


def _full(answer: Answer, plan: Plan, input_tokens: int, request_id: str) -> FullReply:
    delay = plan.generation_delay(len(answer.tokens))
    headers = [("x-request-id", request_id)]
    if plan.after is not None:
        default = (
            "DataInspectionFailed"
            if plan.after.kind == "content-filter-after"
            else ("InternalError")
        )
        status, code, message = _fault_parts(plan.after, default)
        reply = error_reply(status, code, message, request_id)
        reply.delay = delay
        return reply
    finish = "length" if answer.truncated else "stop"
    body = _result(answer.text, finish, input_tokens, len(answer.tokens), request_id, plan)
    return json_reply(200, body, headers, delay=delay, answer=True)


def _result(
    text: str, finish: str, input_tokens: int, output_tokens: int, request_id: str, plan: Plan
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "message": {"content": [{"text": text}], "role": "assistant"},
        "finish_reason": finish,
    }
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    body: dict[str, Any] = {
        "output": {"choices": [choice]},
        "usage": usage,
        "request_id": request_id,
    }
    if plan.unknown_fields:
        choice["logprobs"] = None
        usage["image_tokens"] = IMAGE_TOKENS
        body["output"]["emu_unknown"] = {"nested": [1, "x"]}
    return body


def _frames(
    answer: Answer, plan: Plan, input_tokens: int, request_id: str, stamp: bool
) -> Iterator[Frame]:
    after = plan.after
    event_id = 0
    if plan.unknown_fields:
        unknown = dumps({"request_id": request_id, "emu_unknown": True})
        yield Frame(b"event:emu-heartbeat\n:HTTP_STATUS/200\ndata:" + unknown + b"\n\n")
    text = ""
    for index, token in enumerate(answer.tokens):
        if after is not None and index == plan.after_n:
            yield _after_frame(after, event_id + 1, request_id)
            return
        event_id += 1
        if plan.rewrite_at is not None and index == plan.rewrite_at and text:
            # The cumulative text, once, with its last character not yet whole: the next
            # event carries the corrected text (what a client must not duplicate).
            odd = _result(text[:-1] + "\ufffd", "null", input_tokens, index, request_id, plan)
            lead = b"id:%d\nevent:result\n:HTTP_STATUS/200\ndata:" % event_id
            yield json_frame(lead, odd, b"\n\n", stamp=stamp, paced=True, adds="")
            event_id += 1
        text += token
        body = _result(text, "null", input_tokens, index + 1, request_id, plan)
        lead = b"id:%d\nevent:result\n:HTTP_STATUS/200\ndata:" % event_id
        yield json_frame(lead, body, b"\n\n", stamp=stamp, paced=True, adds=token)
    if after is not None:
        yield _after_frame(after, event_id + 1, request_id)
        return
    if plan.no_terminator:
        return
    finish = "length" if answer.truncated else "stop"
    body = _result(text, finish, input_tokens, len(answer.tokens), request_id, plan)
    lead = b"id:%d\nevent:result\n:HTTP_STATUS/200\ndata:" % (event_id + 1)
    yield Frame(lead + dumps(body) + b"\n\n")


def _after_frame(fault: Fault, event_id: int, request_id: str) -> Frame:
    default = "DataInspectionFailed" if fault.kind == "content-filter-after" else "InternalError"
    status, code, message = _fault_parts(fault, default)
    return Frame(error_frame(event_id, status, code, message, request_id), paced=True)


# --- request shape ------------------------------------------------------------------------
def last_user_text(body: Any) -> str:
    inp = body.get("input") if isinstance(body, dict) else None
    messages = inp.get("messages") if isinstance(inp, dict) else None
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if not isinstance(content, list):
        return content if isinstance(content, str) else ""
    return " ".join(
        item["text"]
        for item in content
        if isinstance(item, dict) and isinstance(item.get("text"), str)
    )


def _all_text(messages: list[dict[str, Any]]) -> str:
    return " ".join(_text_of(m.get("content")) for m in messages)


def _image_urls(messages: list[dict[str, Any]]) -> list[str]:
    return [item["image"] for m in messages for item in m["content"] if "image" in item]


def validate(body: Any) -> list[dict[str, Any]]:
    """The checked messages, or `BadRequest` in DashScope's words."""
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(
            'Required parameter "model" missing from request.', code="BadRequest.EmptyModel"
        )
    if model not in MODELS:
        raise BadRequest("Model not exist.")
    inp = body.get("input")
    messages = inp.get("messages") if isinstance(inp, dict) else None
    if messages is None:
        raise BadRequest('Either "prompt" or "messages" must exist and cannot both be none')
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "<400> InternalError.Algo.InvalidParameter: messages must be a non-empty list."
        )
    for index, message in enumerate(messages):
        _check_message(index, message)
    if messages[-1]["role"] != "user":
        raise BadRequest(
            "<400> InternalError.Algo.InvalidParameter: The last message must be from the user."
        )
    _check_parameters(body.get("parameters"))
    return messages


CONTEXT_TOKENS = 8192  # seed 002: input (image tokens included) plus max_new_tokens
DEFAULT_MAX_NEW_TOKENS = 512


def _check_context(input_tokens: int, max_new_tokens: int | None) -> None:
    if input_tokens + (max_new_tokens or DEFAULT_MAX_NEW_TOKENS) > CONTEXT_TOKENS:
        # UNCONFIRMED wording (Qwen's reads "Range of input length should be [1, N]").
        raise BadRequest(
            "<400> InternalError.Algo.InvalidParameter: Range of input length should be "
            f"[1, {CONTEXT_TOKENS - (max_new_tokens or DEFAULT_MAX_NEW_TOKENS)}]"
        )


def _check_message(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in {"system", "user", "assistant"}:
        raise BadRequest(f"<400> InternalError.Algo.InvalidParameter: {where}.role is invalid.")
    content = message.get("content")
    if not isinstance(content, list) or not content:
        raise BadRequest(
            f"<400> InternalError.Algo.InvalidParameter: {where}.content must be a list of "
            '{"image": ...} / {"text": ...} objects.'
        )
    for item in content:
        if not (
            isinstance(item, dict)
            and len(item) == 1
            and (isinstance(item.get("text"), str) or isinstance(item.get("image"), str))
        ):
            raise BadRequest(
                f"<400> InternalError.Algo.InvalidParameter: {where}.content items must be "
                '{"image": "<url>"} or {"text": "<text>"}.'
            )


def _check_parameters(parameters: Any) -> None:
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise BadRequest("<400> InternalError.Algo.InvalidParameter: parameters must be an object.")
    checks: dict[str, tuple[str, Any]] = {
        "temperature": ("temperature must be 0 or more", lambda v: is_number(v) and v >= 0),
        "top_p": ("Range of top_p should be (0.0, 1.0]", lambda v: is_number(v) and 0 < v <= 1),
        # Seed 002: None, or above 100 to switch top-k off.
        "top_k": ("top_k must be an integer of 0 or more", lambda v: is_int(v) and v >= 0),
        "min_new_tokens": (
            "Range of min_new_tokens should be [1, 8192]",
            lambda v: is_int(v) and 1 <= v <= 8192,
        ),
        # The upper bound is UNCONFIRMED; 8192 is the model's whole context.
        "max_new_tokens": (
            "Range of max_new_tokens should be [1, 8192]",
            lambda v: is_int(v) and 1 <= v <= 8192,
        ),
    }
    for name, (message, ok) in checks.items():
        if name in parameters and not ok(parameters[name]):
            raise BadRequest(f"<400> InternalError.Algo.InvalidParameter: {message}")
