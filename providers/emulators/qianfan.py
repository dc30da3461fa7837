"""Baidu Qianfan, wenxinworkshop v1 with OAuth access tokens (docs/providers.md section 3).

* ``POST|GET /oauth/2.0/token?grant_type=client_credentials&client_id=AK&client_secret=SK``
  mints a token (``expires_in`` 2592000); older tokens stay valid.
* ``POST /rpc/2.0/ai_custom/v1/wenxinworkshop/chat/llama_3_70b?access_token=...``.

Errors are HTTP 200 JSON bodies ``{"error_code": N, "error_msg": "..."}``, also for stream
requests. Streams are ``data: {...}`` events with an incremental ``result``, ``sentence_id``
and ``is_end``; there is no ``[DONE]``. A mid-stream error is a bare JSON line (no ``data:``).
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl

from providers.emulators.answer import Answer, build_answer, count_tokens
from providers.emulators.common import (
    Handled,
    NotJson,
    Options,
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

VENDOR = "qianfan"
TOKEN_PATH = "/oauth/2.0/token"
CHAT_PATH = re.compile(r"^/rpc/2\.0/ai_custom/v1/wenxinworkshop/chat/([^/]+)$")
MODELS = frozenset({"llama_3_70b", "llama_3_8b"})
TOKEN_LIFETIME = 2592000
MAX_INPUT_CHARS = 4800
RATE_HEADERS = [("X-Ratelimit-Limit-Requests", "300"), ("X-Ratelimit-Limit-Tokens", "300000")]

MESSAGES: dict[int, str] = {
    1: "Unknown error",
    2: "Service temporarily unavailable",
    3: "Unsupported openapi method",
    4: "Open api request limit reached",
    17: "Open api daily request limit reached",
    18: "Open api qps request limit reached",
    19: "Open api total request limit reached",
    100: "Invalid parameter",
    110: "Access token invalid or no longer valid",
    111: "Access token expired",
    336000: "Internal error",
    336001: "Invalid Argument",
    336002: "Invalid JSON",
    336003: "Invalid parameter",
    336006: "the length of messages must be an odd number",
    # Over-long input: 336003 or 336007 per providers.md 3.5. UNCONFIRMED which, and the text.
    336007: "the max length of current question is 4800",
    336100: "try again later",
    336101: "invalid HTTP method",
    336501: "Rate limit reached for RPM",
    336502: "Rate limit reached for TPM",
}


def error_body(code: int, message: str | None = None) -> dict[str, Any]:
    return {"error_code": code, "error_msg": message or MESSAGES.get(code, "Unknown error")}


def error_reply(
    code: int,
    message: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    status: int = 200,
) -> FullReply:
    return json_reply(status, error_body(code, message), [*RATE_HEADERS, *headers])


class QianfanHandler:
    vendor = VENDOR

    def __init__(self, state: EmulatorState, options: Options) -> None:
        self.state = state
        self.options = options

    # --- OAuth token endpoint --------------------------------------------------------------
    def token(self, req: HttpRequest) -> FullReply:
        params = dict(req.query)
        if req.method == "POST" and "form-urlencoded" in req.headers.get("content-type", ""):
            # The documented form is the query string; a form body is accepted as a fallback.
            form = dict(parse_qsl(req.body.decode("latin-1"), keep_blank_values=True))
            params = {**form, **params}
        creds = self.options.credentials
        if req.method not in {"GET", "POST"}:
            return json_reply(
                405, {"error": "invalid_request", "error_description": "method not allowed"}
            )
        if params.get("grant_type") != "client_credentials":
            # UNCONFIRMED status; the body follows RFC 6749 as Baidu's does.
            return json_reply(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "The authorization grant type is not supported",
                },
            )
        # UNCONFIRMED: the HTTP status of invalid_client (401 is likely, providers.md 3.1).
        if not hmac.compare_digest(params.get("client_id", "").encode(), creds.qianfan_ak.encode()):
            return json_reply(
                401, {"error": "invalid_client", "error_description": "unknown client id"}
            )
        if not hmac.compare_digest(
            params.get("client_secret", "").encode(), creds.qianfan_sk.encode()
        ):
            return json_reply(
                401,
                {"error": "invalid_client", "error_description": "Client authentication failed"},
            )
        return json_reply(
            200,
            {
                "refresh_token": f"25.{secrets.token_hex(16)}.315360000.{int(time.time())}.282335",
                "expires_in": TOKEN_LIFETIME,
                "session_key": secrets.token_hex(24),
                "access_token": self.state.issue_token(),
                "scope": "public brain_all_scope wenxinworkshop_mgr ai_custom_yiyan_com "
                "ai_custom_yiyan_com_llama3_70b",
                "session_secret": secrets.token_hex(16),
            },
        )

    # --- chat endpoint ---------------------------------------------------------------------
    async def handle(
        self, req: HttpRequest, rec: RecordedRequest, scripted: Sequence[Fault], model: str
    ) -> Handled:
        body = try_parse(req.body)
        plan = make_plan(self.state, rec, VENDOR, scripted, last_user_text(body))
        return self._respond(req, plan, model), plan

    def _respond(self, req: HttpRequest, plan: Plan, model: str) -> Reply:
        if req.method != "POST":
            return error_reply(336101)  # UNCONFIRMED text
        before = plan.before
        if before is not None and before.kind == "auth-before":
            return _fault_reply(before, 110)
        token = req.query.get("access_token", "")
        if not token:
            return error_reply(100)
        token_state = self.state.token_state(token)
        if token_state != "valid":
            return error_reply(111 if token_state == "expired" else 110)
        if before is not None:
            default = {"429-before": 18, "quota-before": 17, "free-tier-before": 19,
                       "500-before": 336000}[before.kind]
            return _fault_reply(before, default)
        if model not in MODELS:
            return error_reply(3)
        try:
            body = parse_body(req.body)
        except NotJson:
            return error_reply(336002)
        problem = validate(body, self.options.qianfan_unknown_keys)
        if problem is not None:
            return error_reply(*problem)
        answer = build_answer(last_user_text(body), plan)
        prompt_tokens = count_tokens(_all_text(body))
        stamp = self.options.timestamps
        if body.get("stream") is True:
            frames = _frames(answer, plan, prompt_tokens, stamp)
            return StreamReply(200, [("Content-Type", "text/event-stream"), *RATE_HEADERS], frames)
        return _full(answer, plan, prompt_tokens)


def _fault_reply(fault: Fault, default_code: int) -> FullReply:
    code = fault.integer("code", default_code)
    message = fault.text("message", MESSAGES.get(code, "Unknown error"))
    status = fault.integer("status", 200)
    return error_reply(code, message, retry_after_header(fault), status=status)


def _chat_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "as-" + "".join(secrets.choice(alphabet) for _ in range(10))


def _usage(prompt_tokens: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _full(answer: Answer, plan: Plan, prompt_tokens: int) -> FullReply:
    delay = plan.generation_delay(len(answer.tokens))
    after = plan.after
    body: dict[str, Any] = {
        "id": _chat_id(),
        "object": "chat.completion",
        "created": int(time.time()),
    }
    if after is not None and after.kind == "error-after":
        reply = _fault_reply(after, 336000)
        reply.delay = delay
        return reply
    filtered = after is not None
    body |= {
        "result": "" if filtered else answer.text,
        "is_truncated": answer.truncated,
        "need_clear_history": filtered,
    }
    if filtered:
        body["ban_round"] = after.integer("ban_round", -1) if after is not None else -1
    body["usage"] = _usage(prompt_tokens, 0 if filtered else len(answer.tokens))
    if plan.unknown_fields:
        body |= {"finish_reason": "normal", "flag": 0, "emu_unknown": {"nested": [1, "x"]}}
    return json_reply(200, body, RATE_HEADERS, delay=delay, answer=True)


def _frames(answer: Answer, plan: Plan, prompt_tokens: int, stamp: bool) -> Iterator[Frame]:
    lead = plan.data_prefix
    chat_id, created, after = _chat_id(), int(time.time()), plan.after

    def event(index: int, result: str, *, end: bool, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": chat_id,
            "object": "chat.completion",
            "created": created,
            "sentence_id": index,
            "is_end": end,
            "is_truncated": False,
            "result": result,
            "need_clear_history": False,
            "usage": _usage(prompt_tokens, min(index + 1, len(answer.tokens))),
        }
        body |= extra
        if plan.unknown_fields:
            body |= {"flag": 0, "emu_unknown": {"nested": [1, "x"]}}
        return body

    if plan.unknown_fields:
        yield Frame(b"event: emu-ping\n" + lead + dumps({"emu_unknown": True}) + b"\n\n")
    for index, token in enumerate(answer.tokens):
        if after is not None and index == plan.after_n:
            yield _after_frame(lead, after, event(index, "", end=True))
            return
        yield json_frame(
            lead, event(index, token, end=False), b"\n\n", stamp=stamp, paced=True, adds=token
        )
    count = len(answer.tokens)
    if after is not None:
        yield _after_frame(lead, after, event(count, "", end=True))
        return
    if plan.no_terminator:
        return
    final = event(count, "", end=True, is_truncated=answer.truncated)
    final["usage"] = _usage(prompt_tokens, count)
    yield Frame(lead + dumps(final) + b"\n\n")


def _after_frame(lead: bytes, fault: Fault, end_event: dict[str, Any]) -> Frame:
    if fault.kind == "content-filter-after":
        end_event |= {"need_clear_history": True, "ban_round": fault.integer("ban_round", -1)}
        return Frame(lead + dumps(end_event) + b"\n\n", paced=True)
    code = fault.integer("code", 336000)
    line = dumps(error_body(code, fault.text("message", MESSAGES.get(code, "Unknown error"))))
    return Frame(line + b"\n\n", paced=True)  # a bare JSON line: no "data:" prefix


# --- request shape ------------------------------------------------------------------------
def last_user_text(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def _all_text(body: dict[str, Any]) -> str:
    parts = [m.get("content", "") for m in body["messages"]]
    return " ".join([str(body.get("system", "")), *parts])


# The body keys seed 003 documents for Meta-Llama-3-70B-Instruct.
DOCUMENTED_KEYS = frozenset({"messages", "stream", "temperature", "top_k", "top_p",
                             "penalty_score", "stop", "system", "user_id", "metadata"})


def validate(body: Any, unknown_keys: str = "refuse") -> tuple[int, str] | None:
    """(error_code, error_msg) for the first problem, the way Qianfan reports it.

    `unknown_keys`: whether a key the seed does not document is refused (336003) or ignored;
    UNCONFIRMED which the vendor does (providers.md 3.2), so both are switchable.
    """
    if not isinstance(body, dict):
        return 336002, "Invalid JSON"
    unknown = sorted(set(body) - DOCUMENTED_KEYS)
    if unknown and unknown_keys == "refuse":
        return 336003, f"Invalid parameter: {unknown[0]}"  # UNCONFIRMED text
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return 336003, "messages can not be empty"  # UNCONFIRMED text
    for message in messages:
        if not (isinstance(message, dict) and isinstance(message.get("content"), str)):
            return 336003, "Invalid parameter: messages content must be a string"
    # 336006 covers both an even count and a wrong role order (bce-qianfan-sdk issue #866).
    roles_ok = all(
        m.get("role") == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(messages)
    )
    if len(messages) % 2 == 0 or not roles_ok:
        return 336006, MESSAGES[336006]
    system = body.get("system", "")
    if not isinstance(system, str):
        return 336104, "invalid system"  # UNCONFIRMED text
    if len(system) + sum(len(m["content"]) for m in messages) > MAX_INPUT_CHARS:
        return 336007, MESSAGES[336007]
    return _check_sampling(body)


def _check_sampling(body: dict[str, Any]) -> tuple[int, str] | None:
    # Texts below are UNCONFIRMED; the code 336003 is what clients match on.
    checks: dict[str, tuple[str, Any]] = {
        "temperature": (
            "the range of temperature is (0, 1.0]",
            lambda v: is_number(v) and 0 < v <= 1,
        ),
        "top_p": ("the range of top_p is [0, 1.0]", lambda v: is_number(v) and 0 <= v <= 1),
        "top_k": ("top_k must be a positive integer", lambda v: is_int(v) and v > 0),
        "penalty_score": (
            "the range of penalty_score is [1.0, 2.0]",
            lambda v: is_number(v) and 1 <= v <= 2,
        ),
        "stream": ("stream must be a boolean", lambda v: isinstance(v, bool)),
        "user_id": ("user_id must be a string", lambda v: isinstance(v, str)),
        "stop": (
            "stop must be at most 4 strings of at most 20 characters",
            lambda v: (
                isinstance(v, list)
                and len(v) <= 4
                and all(isinstance(s, str) and len(s) <= 20 for s in v)
            ),
        ),
    }
    for name, (message, ok) in checks.items():
        if name in body and not ok(body[name]):
            return 336003, message
    return None
