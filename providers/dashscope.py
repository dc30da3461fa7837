"""Alibaba DashScope client (native multimodal-generation, docs/providers.md section 2).

* A request carries exactly one image (seed: the request must contain an image URL; follow-up
  user turns may be text only; no image lists): a request with none, or with more than one, is
  refused here with BAD_REQUEST before any network call. Which image to send is the caller's
  choice (the answer core sends the latest one of the branch).
* Images go as `ImagePart.url` (a signed URL our app serves). With
  `config.options["image_transport"] == "data_uri"` they go as `data:<mime>;base64,...`.
* `incremental_output` is never sent: this model streams *cumulative* text, turned into deltas
  by prefix; an event that does not extend what was seen continues from the common prefix
  (a `Delta` with `rewind`), so the text always equals the vendor's latest text.
* Stream events look like `id:1 / event:result / :HTTP_STATUS/200 / data:{...}`; the status
  comment is read, `finish_reason` is the string "null" (or JSON null) until the end, and there
  is no `[DONE]`: the end is a non-null finish reason, EOF before it is a truncated answer.
* Errors arrive as a non-200 JSON body, as a non-200 SSE-framed body labelled JSON, or as
  HTTP 200 with an `event:error` frame; all three are read the same way.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from providers.base import (
    ChatRequest,
    Delta,
    ErrorKind,
    Finish,
    ImagePart,
    ProviderConfig,
    ProviderError,
    StreamItem,
    Usage,
)
from providers.client import StreamingClient, json_object, vendor_url
from providers.redact import safe_vendor_text
from providers.retry import (
    RetryPolicy,
    TransportErrors,
    is_event_stream,
    parse_retry_after,
    read_body_limited,
)
from providers.sse import SSEDecoder, SSEEvent, aiter_events, decode_all

logger = logging.getLogger("providers.dashscope")

NAME = "DashScope"
PATH = "/services/aigc/multimodal-generation/generation"
IMAGE_REQUIRED = (
    "This model needs an image in the conversation: attach an image to your message, or choose "
    "another model."
)
ONE_IMAGE = "This model takes one image per request; send only the latest one."
DOWNLOAD_HINT = (
    "DashScope could not download the image from this site. An administrator has to make "
    "SITE_URL reachable from the internet: Alibaba's servers fetch every image from it."
)
FREE_TIER_HINT = (
    "The free trial of this model on DashScope is used up, and the model cannot be bought: "
    "choose another model."
)

_KIND_TEXT: dict[ErrorKind, str] = {
    ErrorKind.QUOTA_EXHAUSTED: "The DashScope quota is used up or the account is in arrears.",
    ErrorKind.RATE_LIMITED: "DashScope is rate limiting requests.",
    ErrorKind.AUTH: "DashScope refused the API key or access to the model.",
    ErrorKind.CONTENT_FILTERED: "DashScope's content moderation stopped this answer.",
    ErrorKind.BAD_REQUEST: "DashScope rejected the request.",
    ErrorKind.TIMEOUT: "DashScope timed out.",
    ErrorKind.UNAVAILABLE: "DashScope failed.",
}


@dataclass(frozen=True)
class _Prepared:
    url: str
    body: dict[str, Any]


class DashScopeClient(StreamingClient):
    kind = "dashscope"
    name = NAME

    def __init__(self, config: ProviderConfig, *, retry_policy: RetryPolicy | None = None) -> None:
        api_key = self._credential(config.credentials, "api_key")
        self._api_key = api_key
        self._setup(config, retry_policy, [api_key])
        self._image_transport = str(config.options.get("image_transport", "url"))
        self._workspace = config.options.get("workspace")

    # ---- request shaping ----------------------------------------------------------------

    def _prepare(self, request: ChatRequest) -> _Prepared:
        params = self._validated_params(request)
        images = sum(len(m.images) for m in request.messages if m.role == "user")
        if images == 0:
            raise ProviderError(ErrorKind.BAD_REQUEST, IMAGE_REQUIRED, vendor_code="image_required",
                                hint=IMAGE_REQUIRED)
        if images > 1:
            raise ProviderError(ErrorKind.BAD_REQUEST, ONE_IMAGE, vendor_code="too_many_images")
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": [{"text": request.system}]})
        for message in request.messages:
            content: list[dict[str, str]] = []
            if message.role == "user":
                content += [{"image": self._image_value(image)} for image in message.images]
            if message.text or not content:
                content.append({"text": message.text})
            messages.append({"role": message.role, "content": content})
        parameters = {("max_new_tokens" if k == "max_tokens" else k): v for k, v in params.items()}
        body = {"model": request.model, "input": {"messages": messages}, "parameters": parameters}
        return _Prepared(url=self._base_url + PATH, body=body)

    def _image_value(self, image: ImagePart) -> str:
        if self._image_transport == "data_uri":
            encoded = base64.b64encode(image.data).decode("ascii")
            return f"data:{image.mime_type};base64,{encoded}"
        if not image.url:
            raise ProviderError(
                ErrorKind.BAD_REQUEST,
                f"{NAME} needs images by URL, and this image has none.",
                vendor_code="image_url_missing",
            )
        return image.url

    def _headers(self) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "text/event-stream",
            "X-DashScope-SSE": "enable",
            "X-Accel-Buffering": "no",
        }
        if self._workspace:
            headers["X-DashScope-WorkSpace"] = str(self._workspace)
        return headers

    # ---- one attempt ----------------------------------------------------------------------

    async def _attempt(self, prepared: _Prepared) -> AsyncGenerator[StreamItem, None]:
        guard = TransportErrors(NAME, self.config)
        with guard:
            async with self._http.stream(
                "POST", vendor_url(prepared.url), json=prepared.body, headers=self._headers()
            ) as response:
                guard.in_body = True
                if response.status_code == 200 and is_event_stream(response):
                    async with aclosing(self._read_stream(response)) as items:
                        async for item in items:
                            yield item
                    return
                body = await read_body_limited(response)
        for item in self._read_plain(response, body):
            yield item

    async def _read_stream(self, response: httpx.Response) -> AsyncGenerator[StreamItem, None]:
        decoder = SSEDecoder(
            max_event_bytes=self._max_event_bytes, keep_comments=True, provider=NAME
        )
        text_so_far = CumulativeText()
        request_id = response.headers.get("x-request-id")
        events = aiter_events(response, decoder)
        async for event in events:
            payload = json_object(event.data)
            if _is_error_event(event, payload):
                raise self._error(_event_status(event) or 200, payload, response.headers)
            if payload is None:
                if event.complete and event.data.strip():
                    raise ProviderError(
                        ErrorKind.UNAVAILABLE, f"{NAME} sent a malformed stream event."
                    )
                continue
            request_id = str(payload.get("request_id") or request_id or "") or None
            choice = _first_choice(payload)
            text = _choice_text(choice)
            if text is not None:
                delta, rewind = text_so_far.feed(text)
                if delta or rewind:
                    yield Delta(delta, rewind=rewind)
            reason = _finish_reason(choice)
            if reason is not None:
                await events.finish()  # the connection goes back to the pool
                yield Finish(reason=reason, usage=_usage(payload), request_id=request_id)
                return
        raise ProviderError(
            ErrorKind.TRUNCATED,
            f"The answer from {NAME} stopped before it was complete.",
            request_id=request_id,
        )

    def _read_plain(self, response: httpx.Response, body: bytes) -> list[StreamItem]:
        """A non-stream reply: an error (JSON or SSE-framed), or defensively a whole answer."""
        payload = _payload_from_body(body)
        if response.status_code != 200 or payload is None or _has_error_code(payload):
            raise self._error(response.status_code, payload, response.headers)
        choice = _first_choice(payload)
        text = _choice_text(choice) or ""
        request_id = str(payload.get("request_id") or "") or response.headers.get("x-request-id")
        items: list[StreamItem] = [Delta(text)] if text else []
        reason = _finish_reason(choice) or "stop"
        items.append(Finish(reason=reason, usage=_usage(payload), request_id=request_id))
        return items

    # ---- errors ---------------------------------------------------------------------------

    def _error(
        self, status: int, payload: Mapping[str, Any] | None, headers: httpx.Headers
    ) -> ProviderError:
        payload = payload or {}
        code = str(payload.get("code") or "") or None
        vendor_message = str(payload.get("message") or "")
        kind = _kind(code, str(payload.get("type") or ""), vendor_message, status)
        hint = _hint(code, vendor_message)
        request_id = str(payload.get("request_id") or "") or headers.get("x-request-id")
        detail = safe_vendor_text(vendor_message, [self._api_key])
        message = _KIND_TEXT[kind]
        if code or detail:
            message += f" ({': '.join(p for p in (code, detail) if p)})"
        retry_after = parse_retry_after(headers.get("retry-after"))
        return ProviderError(
            kind,
            message,
            vendor_code=code,
            request_id=request_id,
            status=status,
            retry_after=retry_after if kind is ErrorKind.RATE_LIMITED else None,
            hint=hint,
        )


# ---- helpers ----------------------------------------------------------------------------


def _kind(code: str | None, type_: str, message: str, status: int) -> ErrorKind:
    """Classify by vendor code first, HTTP status second (providers.md 2.4)."""
    code = code or ""
    lowered = message.lower()
    if code == "InvalidParameter.DataInspection":
        return ErrorKind.BAD_REQUEST  # the image could not be downloaded: not moderation
    if code.startswith("DataInspectionFailed"):
        return ErrorKind.CONTENT_FILTERED
    if (code == "Arrearage" or type_ == "Arrearage" or code.startswith("AllocationQuota")
            or "free allocated quota" in lowered or "free tier" in lowered):
        return ErrorKind.QUOTA_EXHAUSTED
    if code.startswith("Throttling"):
        return ErrorKind.RATE_LIMITED
    if code == "InvalidApiKey" or "AccessDenied" in code:
        return ErrorKind.AUTH
    if code.startswith(("InvalidParameter", "BadRequest", "InvalidURL", "ModelNotFound")):
        return ErrorKind.BAD_REQUEST
    if "InvalidParameter" in code:
        return ErrorKind.BAD_REQUEST
    if code.startswith("InternalError"):
        return ErrorKind.UNAVAILABLE
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (408, 504):
        return ErrorKind.TIMEOUT
    if 400 <= status < 500:
        return ErrorKind.BAD_REQUEST
    return ErrorKind.UNAVAILABLE


def _hint(code: str | None, message: str) -> str | None:
    """What to do, for the codes whose generic kind advice would mislead."""
    if code == "InvalidParameter.DataInspection":
        return DOWNLOAD_HINT
    if (code or "").startswith("AllocationQuota.FreeTier") or "free tier" in message.lower():
        return FREE_TIER_HINT
    return None


def _payload_from_body(body: bytes) -> dict[str, Any] | None:
    """JSON, or the `data:` of an SSE-framed body mislabelled as JSON."""
    text = body.decode("utf-8", errors="replace")
    payload = json_object(text)
    if payload is not None:
        return payload
    for event in decode_all(body):
        payload = json_object(event.data)
        if payload is not None:
            return payload
    return None


def _event_status(event: SSEEvent) -> int | None:
    for comment in event.comments:
        name, _, value = comment.partition("/")
        if name.strip().upper() == "HTTP_STATUS" and value.strip().isdigit():
            return int(value.strip())
    return None


def _has_error_code(payload: Mapping[str, Any]) -> bool:
    return bool(payload.get("code")) and "output" not in payload


def _is_error_event(event: SSEEvent, payload: Mapping[str, Any] | None) -> bool:
    status = _event_status(event)
    return (
        event.event == "error"
        or (status is not None and status >= 400)
        or (payload is not None and _has_error_code(payload))
    )


def _first_choice(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    output = payload.get("output")
    choices = output.get("choices") if isinstance(output, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def _choice_text(choice: Mapping[str, Any]) -> str | None:
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = [part.get("text") for part in content if isinstance(part, dict)]
    return "".join(text for text in texts if isinstance(text, str))


class CumulativeText:
    """Turns DashScope's text events into deltas.

    This model sends the whole text so far in every event (seed 002). The mode is fixed at the
    second event that carries text: if it extends the first, the stream is cumulative; if not,
    the server sends increments after all (as other DashScope models do) and they are appended.
    In cumulative mode an event that does not extend what was seen (a rewritten tail, e.g. a
    replacement character that became a whole one) continues from the common prefix: the
    caller takes back what differs and appends the rest, never the whole text again.
    """

    def __init__(self) -> None:
        self.seen = ""
        self.events = 0
        self.cumulative = True

    def feed(self, text: str) -> tuple[str, int]:
        """(new text, characters to take back first) for one event's text."""
        if not text:
            return "", 0
        self.events += 1
        if self.events == 2 and not text.startswith(self.seen):
            self.cumulative = False
        if not self.cumulative:
            self.seen += text
            return text, 0
        if text.startswith(self.seen):
            delta = text[len(self.seen):]
            self.seen = text
            return delta, 0
        common = 0
        for old, new in zip(self.seen, text, strict=False):
            if old != new:
                break
            common += 1
        logger.info("%s: cumulative text diverged after %d characters", NAME, common)
        rewind = len(self.seen) - common
        self.seen = text
        return text[common:], rewind


def _finish_reason(choice: Mapping[str, Any]) -> str | None:
    reason = choice.get("finish_reason")
    if reason is None or not isinstance(reason, str) or reason.strip().lower() in ("", "null"):
        return None
    return reason


def _usage(payload: Mapping[str, Any]) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("input_tokens")
    completion = usage.get("output_tokens")
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
    )
