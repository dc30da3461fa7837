"""The OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions (docs/api.md).

One authentication path: `Authorization: Bearer <personal token>`. The session cookie is never
read here, so a browser session cannot drive the API (threat T16), and that is also why the
views are CSRF-exempt. Everything else is the web page's rules: the models a user may pick
(ModelConfig.objects.visible_to), the one image validator, budgets, rate and concurrency limits
and the UsageRecord ledger (source="api").

Images come only as `data:` URLs. This server never fetches a URL a client gives (T09).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from conversations.answers.generation import FAILURE_MESSAGES
from conversations.api import tokens
from conversations.images import attachments, validator
from conversations.models import Attachment, UsageRecord
from conversations.usage import accounting
from providers import crypto
from providers.base import (
    ChatRequest,
    Delta,
    ErrorKind,
    Finish,
    ProviderClient,
    ProviderError,
    StreamItem,
)
from providers.base import Message as WireMessage
from providers.models import ModelConfig
from providers.params import PARAM_SPECS, validate_params
from providers.services import client_for

log = logging.getLogger(__name__)

MAX_MESSAGES = 500
MAX_IMAGES_PER_REQUEST = 8  # each one is decoded and re-encoded: bounded work per request
CHARS_PER_TOKEN = 4  # for the estimate recorded when a provider reports no usage

# OpenAI name -> our parameter name (providers/params.py).
OPENAI_PARAMS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
# Our own names are accepted too (e.g. `top_k` through the openai package's extra_body).
NATIVE_PARAMS = frozenset(name for specs in PARAM_SPECS.values() for name in specs)
# A value that changes nothing: sent by many tools by default, so a model without the
# parameter can ignore it instead of refusing the request.
NEUTRAL_VALUES: dict[str, Callable[[Any], bool]] = {
    "presence_penalty": lambda v: v == 0,
    "frequency_penalty": lambda v: v == 0,
    "stop": lambda v: v in ("", []),
}
# Other OpenAI fields: accepted only with a value that asks for nothing we do not do.
IGNORABLE: dict[str, Callable[[Any], bool]] = {
    "user": lambda v: isinstance(v, str),
    "metadata": lambda v: isinstance(v, dict),
    "store": lambda v: v is False,
    "service_tier": lambda v: isinstance(v, str),
    "n": lambda v: v == 1 and not isinstance(v, bool),
    "logprobs": lambda v: v is False,
    "top_logprobs": lambda v: v == 0,
    "logit_bias": lambda v: v == {},
    "tools": lambda v: v == [],
    "functions": lambda v: v == [],
    "tool_choice": lambda v: v in ("none", "auto"),
    "parallel_tool_calls": lambda v: isinstance(v, bool),
    "response_format": lambda v: v == {"type": "text"},
    "modalities": lambda v: v == ["text"],
}
REQUEST_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})
FINISH_REASONS = {"stop": "stop", "length": "length", "max_tokens": "length",
                  "content_filter": "content_filter"}


# --- errors -----------------------------------------------------------------------------------
class ApiError(Exception):
    """A refusal in the OpenAI error shape. `message` is safe to show; nothing was charged."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 kind: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.kind = kind or _default_type(status)
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(max(1, int(self.retry_after)))
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response


def _default_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def _bad(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(400, code, message, param=param)


def unauthorized() -> ApiError:
    # One answer for every cause (none, malformed, unknown, revoked, inactive user).
    return ApiError(
        401, "invalid_api_key",
        "Missing or invalid API token. Send 'Authorization: Bearer <token>' with a token from "
        "your profile page (API tokens).")


def limit_error(exc: accounting.LimitExceeded) -> ApiError:
    code, kind = {
        "rate_limited": ("rate_limit_exceeded", "rate_limit_error"),
        "too_many_answers": ("too_many_concurrent_requests", "rate_limit_error"),
        "budget_exceeded": ("budget_exceeded", "insufficient_quota"),
        "prompt_too_large": ("prompt_too_large", "invalid_request_error"),
    }.get(exc.code, (exc.code, _default_type(exc.status)))
    param = "messages" if exc.code == "prompt_too_large" else None
    return ApiError(exc.status, code, exc.message, param=param, kind=kind,
                    retry_after=exc.retry_after)


def provider_error(exc: ProviderError) -> ApiError:
    """The provider failed before any output. Our own key problems are never a 401 here."""
    message = FAILURE_MESSAGES.get(exc.kind, "The provider failed.")
    retry = math.ceil(exc.retry_after) if exc.retry_after else None
    if exc.kind == ErrorKind.RATE_LIMITED:
        return ApiError(429, "upstream_rate_limited", message, retry_after=retry)
    if exc.kind == ErrorKind.QUOTA_EXHAUSTED:
        return ApiError(429, "upstream_quota_exhausted", message, kind="insufficient_quota")
    if exc.kind == ErrorKind.BAD_REQUEST:
        return ApiError(400, "upstream_bad_request", exc.message)
    if exc.kind == ErrorKind.CONTENT_FILTERED:
        return ApiError(400, "content_filter", message)
    if exc.kind == ErrorKind.AUTH:
        return ApiError(502, "upstream_auth", message)
    code = {ErrorKind.TIMEOUT: "upstream_timeout", ErrorKind.TRUNCATED: "upstream_truncated"}
    return ApiError(502, code.get(exc.kind, "upstream_unavailable"), message)


def internal() -> ApiError:
    return ApiError(500, "internal_error", "Something went wrong on our side. Retry.")


View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


def api_endpoint(*methods: str) -> Callable[[View], View]:
    """Method check, OpenAI-shaped errors, no caching. Views raise ApiError to refuse."""

    def decorate(view: View) -> View:
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            response: HttpResponseBase
            if request.method not in methods:
                response = ApiError(405, "method_not_allowed",
                                    f"Use {' or '.join(methods)} for this endpoint.").response()
                response["Allow"] = ", ".join(methods)
            else:
                try:
                    response = await view(request, *args, **kwargs)
                except ApiError as exc:
                    response = exc.response()
                except Exception:
                    # Our bug, not the client's: log it and answer in the API's own shape.
                    log.error("api %s %s failed", request.method, request.path, exc_info=True)
                    response = internal().response()
            response["Cache-Control"] = "no-store"
            return response

        return csrf_exempt(wrapper)

    return decorate


# --- authentication ---------------------------------------------------------------------------
async def authenticate(request: HttpRequest) -> Any:
    """The user of a valid bearer token; ApiError(401) otherwise. Cookies are ignored."""
    secret = tokens.bearer_secret(request.headers.get("Authorization", ""))
    if secret is None:
        raise unauthorized()
    token = await sync_to_async(tokens.verify)(secret)
    if token is None:
        raise unauthorized()
    return token.user


# --- /v1/models -------------------------------------------------------------------------------
def _model_object(model: ModelConfig) -> dict[str, Any]:
    # The catalogue keeps no creation time; 0 is a valid integer and honest about that.
    return {"id": model.slug, "object": "model", "created": 0,
            "owned_by": model.provider.kind}


def _visible_models(user: Any) -> list[dict[str, Any]]:
    models = ModelConfig.objects.visible_to(user).order_by("sort_order", "slug")
    return [_model_object(m) for m in models]


@api_endpoint("GET")
async def models(request: HttpRequest) -> HttpResponse:
    user = await authenticate(request)
    data = await sync_to_async(_visible_models)(user)
    return JsonResponse({"object": "list", "data": data})


def _find_model(user: Any, slug: Any) -> ModelConfig:
    model = None
    if isinstance(slug, str) and slug:
        model = ModelConfig.objects.visible_to(user).filter(slug=slug).first()
    if model is None:
        # Unknown and not-allowed look the same: ids of restricted models reveal nothing.
        raise ApiError(404, "model_not_found",
                       f"The model {str(slug)[:100]!r} does not exist or you do not have "
                       "access to it. GET /v1/models lists yours.", param="model")
    return model


@api_endpoint("GET")
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    user = await authenticate(request)
    model = await sync_to_async(_find_model)(user, model_id)
    return JsonResponse(_model_object(model))


@api_endpoint("GET", "POST", "PUT", "PATCH", "DELETE")
async def unknown(request: HttpRequest, rest: str = "") -> HttpResponse:
    raise ApiError(404, "unknown_url", f"No endpoint {request.method} {request.path[:200]}. "
                   "This API has GET /v1/models and POST /v1/chat/completions.")


# --- request parsing --------------------------------------------------------------------------
@dataclass
class InMessage:
    role: str  # user | assistant
    text: str
    images: list[tuple[bytes, str]] = field(default_factory=list)  # (data, declared mime)


@dataclass
class Spec:
    model: Any
    system: str
    messages: list[InMessage]
    options: dict[str, Any]  # every other top-level field, checked once the model is known
    stream: bool
    include_usage: bool

    @property
    def prompt_chars(self) -> int:
        return len(self.system) + sum(len(m.text) for m in self.messages)


def body_limit() -> int:
    """Two images at the upload limit in base64, plus the longest prompt escaped."""
    image = math.ceil(settings.IMAGE_MAX_BYTES * 4 / 3) + 64
    return 2 * image + 8 * settings.MAX_PROMPT_CHARS + 256 * 1024


def read_json(request: HttpRequest) -> Any:
    limit = body_limit()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    too_large = ApiError(413, "request_too_large",
                         f"The request body is larger than {limit // 1_048_576} MB.")
    if declared > limit:
        raise too_large
    # request.body would apply DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), too small for one image
    # in base64; the body is read against our own limit instead.
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise too_large
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _bad("invalid_json", "The request body must be a JSON object.") from None


def parse_request(body: Any) -> Spec:
    if not isinstance(body, dict):
        raise _bad("invalid_json", "The request body must be a JSON object.")
    if body.get("model") in (None, ""):
        raise _bad("missing_required_parameter", "'model' is required.", "model")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise _bad("invalid_type", "'stream' must be true or false.", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict) or stream_options.get("include_usage") not in (
            None, True, False):
        raise _bad("invalid_type", "'stream_options' must be {\"include_usage\": true|false}.",
                   "stream_options")
    system, messages = _parse_messages(body.get("messages"))
    options = {k: v for k, v in body.items() if k not in REQUEST_FIELDS}
    return Spec(model=body["model"], system=system, messages=messages, options=options,
                stream=bool(stream), include_usage=bool(stream_options.get("include_usage")))


def _parse_messages(raw: Any) -> tuple[str, list[InMessage]]:
    if not isinstance(raw, list) or not raw:
        raise _bad("missing_required_parameter", "'messages' must be a non-empty list.",
                   "messages")
    if len(raw) > MAX_MESSAGES:
        raise _bad("too_many_messages", f"At most {MAX_MESSAGES} messages per request.",
                   "messages")
    system: list[str] = []
    messages: list[InMessage] = []
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise _bad("invalid_type", "Each message must be an object.", where)
        role = item.get("role")
        if role in ("system", "developer"):
            text, images_ = _parse_content(item.get("content"), where, images_allowed=False)
            system.append(text)
            continue
        if role not in ("user", "assistant"):
            raise _bad("unsupported_role", f"Role {str(role)[:40]!r} is not supported; use "
                       "system, user or assistant.", f"{where}.role")
        if role == "assistant" and (item.get("tool_calls") or item.get("function_call")):
            raise _bad("unsupported_parameter", "Tool calls are not supported.", where)
        text, images_ = _parse_content(item.get("content"), where,
                                       images_allowed=role == "user")
        messages.append(InMessage(role=role, text=text, images=images_))
    if not messages or messages[-1].role != "user":
        raise _bad("invalid_value", "The last message must be a user message.", "messages")
    return "\n\n".join(s for s in system if s), messages


def _parse_content(content: Any, where: str, *, images_allowed: bool
                   ) -> tuple[str, list[tuple[bytes, str]]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad("invalid_type", "'content' must be a string or a list of parts.",
                    f"{where}.content")
    texts: list[str] = []
    found: list[tuple[bytes, str]] = []
    for number, part in enumerate(content):
        here = f"{where}.content[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            if not images_allowed:
                raise _bad("invalid_value", "Images are accepted in user messages only.", here)
            found.append(decode_data_url(_image_url_of(part), here))
        else:
            raise _bad("unsupported_content", "Content parts must be {\"type\": \"text\"} or "
                       "{\"type\": \"image_url\"} with a data: URL.", here)
    return "\n".join(texts), found


def _image_url_of(part: dict[str, Any]) -> Any:
    value = part.get("image_url")
    return value.get("url") if isinstance(value, dict) else value


def decode_data_url(url: Any, where: str) -> tuple[bytes, str]:
    """The bytes of a base64 `data:image/...` URL. Any other URL is refused, never fetched."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise _bad("image_url_not_allowed",
                   "Only data: URLs are accepted for images (data:image/png;base64,...). This "
                   "server never fetches a URL a client gives.", f"{where}.image_url")
    header, comma, payload = url.partition(",")
    media = header[len("data:"):].split(";")
    if not comma or "base64" not in media[1:] or not media[0].startswith("image/"):
        raise _bad("invalid_image", "An image must be a base64 data URL: "
                   "data:image/<type>;base64,<data>.", f"{where}.image_url")
    if len(payload) * 3 // 4 > settings.IMAGE_MAX_BYTES + 3:
        raise _bad("image_too_large", f"An image may have at most "
                   f"{settings.IMAGE_MAX_BYTES // 1_048_576} MB.", f"{where}.image_url")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _bad("invalid_image", "The image's base64 data is malformed.",
                   f"{where}.image_url") from None
    return data, media[0]


# --- checks that need the model, the user and the database -------------------------------------
@dataclass
class Prepared:
    model: ModelConfig
    request: ChatRequest
    record_id: int
    attachment_ids: list[uuid.UUID]
    prompt_chars: int


def model_params(model: ModelConfig, options: dict[str, Any]) -> dict[str, Any]:
    """The model's defaults, overridden by the client's values mapped onto our names."""
    specs = model.param_specs()
    params = {k: v for k, v in (model.default_params or {}).items() if k in specs}
    for name, value in options.items():
        if value is None:
            continue  # "not set", whatever the field
        if name in IGNORABLE and name not in NATIVE_PARAMS:
            if not IGNORABLE[name](value):
                raise _bad("unsupported_parameter",
                           f"'{name}' = {json.dumps(value)[:60]} is not supported here.", name)
            continue
        ours = OPENAI_PARAMS.get(name) or (name if name in NATIVE_PARAMS else None)
        if ours is None:
            raise _bad("unrecognized_parameter",
                       f"Unrecognized request argument supplied: {name[:60]}.", name[:60])
        if ours not in specs:
            if name in NEUTRAL_VALUES and NEUTRAL_VALUES[name](value):
                continue
            accepted = ", ".join(sorted(_openai_names(specs))) or "none"
            raise _bad("unsupported_parameter",
                       f"'{name}' is not supported by {model.slug}; it accepts: {accepted}.",
                       name)
        try:
            params.update(validate_params(model.model_id, {ours: value}))
        except ProviderError as exc:
            raise _bad("invalid_value", exc.message.replace(repr(ours), repr(name)),
                       name) from None
    return params


def _openai_names(specs: dict[str, Any]) -> set[str]:
    names = {openai for openai, ours in OPENAI_PARAMS.items() if ours in specs}
    return names | set(specs)


def check_images(model: ModelConfig, spec: Spec) -> None:
    """The same image rules as the composer (attachments.attach), per user message."""
    counts = [len(m.images) for m in spec.messages if m.role == "user"]
    if sum(counts) and not model.vision:
        raise _bad("images_not_supported", f"{model.display_name} ({model.slug}) does not take "
                   "images. Send text only or choose a vision model.", "messages")
    if model.requires_image and not all(counts):
        raise _bad("image_required", f"{model.display_name} ({model.slug}) needs an image in "
                   "every user message: add an image_url part with a data: URL to each.",
                   "messages")
    per_message = min(model.max_images or 0, settings.DATA_UPLOAD_MAX_NUMBER_FILES)
    if any(count > per_message for count in counts):
        raise _bad("too_many_images", f"{model.display_name} takes at most {per_message} "
                   "image(s) per message.", "messages")
    if sum(counts) > MAX_IMAGES_PER_REQUEST:
        raise _bad("too_many_images", f"At most {MAX_IMAGES_PER_REQUEST} images per request.",
                   "messages")


def _store_images(user: Any, model: ModelConfig, spec: Spec
                  ) -> tuple[list[WireMessage], list[uuid.UUID]]:
    """Every image through the one validator; nothing stays stored when one is refused."""
    stored: list[Attachment] = []
    wire: list[WireMessage] = []
    try:
        for message in spec.messages:
            parts = []
            for data, mime in message.images:
                upload = SimpleUploadedFile("api-image", data, content_type=mime)
                attachment = attachments.attachment_create(user, upload)
                stored.append(attachment)
                parts.append(attachments.image_part(attachment, model))
            wire.append(WireMessage(role=message.role,  # type: ignore[arg-type]
                                    text=message.text, images=tuple(parts)))
    except (attachments.UploadRefused, validator.ImageRejected) as exc:
        Attachment.objects.filter(pk__in=[a.pk for a in stored]).delete()
        raise _bad("invalid_image", exc.message, "messages") from None
    except BaseException:
        Attachment.objects.filter(pk__in=[a.pk for a in stored]).delete()
        raise
    return wire, [a.pk for a in stored]


def prepare(user: Any, spec: Spec) -> Prepared:
    """Every check before the provider is called, then the ledger row. Refusals charge nothing."""
    model = _find_model(user, spec.model)
    check_images(model, spec)
    params = model_params(model, spec.options)
    try:
        accounting.check_limits(user, prompt_chars=spec.prompt_chars)
    except accounting.LimitExceeded as exc:
        raise limit_error(exc) from None
    wire, attachment_ids = _store_images(user, model, spec)
    request = ChatRequest(model=model.model_id, messages=tuple(wire), system=spec.system,
                          params=params)
    record = accounting.record_start(user, model, source=UsageRecord.Source.API)
    return Prepared(model=model, request=request, record_id=record.pk,
                    attachment_ids=attachment_ids, prompt_chars=spec.prompt_chars)


# --- one completion ---------------------------------------------------------------------------
def _estimate(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN) if chars else 0


def _finish_sync(prepared: Prepared, *, status: str, finish: Finish | None, text: str,
                 request_id: str, ttft_ms: int | None, duration_ms: int) -> None:
    usage = finish.usage if finish else None
    prompt = usage.prompt_tokens if usage else None
    completion = usage.completion_tokens if usage else None
    if text and prompt is None:
        # A stopped or failed answer has no usage from the provider, which still charged us:
        # record an estimate so that disconnecting early never escapes the budget (T22).
        prompt = _estimate(prepared.prompt_chars)
    if text and completion is None:
        completion = _estimate(len(text))
    accounting.record_finish(prepared.record_id, status=status, model=prepared.model,
                             prompt_tokens=prompt, completion_tokens=completion,
                             request_id=request_id, ttft_ms=ttft_ms, duration_ms=duration_ms)
    if prepared.attachment_ids:
        # The provider has read the images: an API call keeps no uploads (files go with the
        # rows, through the post_delete signal).
        Attachment.objects.filter(pk__in=prepared.attachment_ids).delete()


class Completion:
    """One provider stream for one API call, and its entry in the ledger."""

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.slug = prepared.model.slug
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.parts: list[str] = []
        self.finish: Finish | None = None
        self.client: ProviderClient | None = None
        self.items: AsyncIterator[StreamItem] | None = None
        self.ended = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def open(self) -> StreamItem:
        """Connect and wait for the first item: errors before any output become HTTP errors."""
        try:
            self.client = client_for(self.prepared.model.provider)
        except (crypto.CredentialsUnreadable, ValidationError):
            raise ProviderError(ErrorKind.AUTH, "The provider is not configured.") from None
        self.items = self.client.stream(self.prepared.request)
        return await self.next()

    async def next(self) -> StreamItem:
        assert self.items is not None
        try:
            item = await anext(self.items)  # type: ignore[call-overload]
        except StopAsyncIteration:
            raise ProviderError(ErrorKind.TRUNCATED,
                                "The stream ended without a finish.") from None
        if isinstance(item, Delta) and item.text:
            if self.first_token is None:
                self.first_token = time.monotonic()
            self.parts.append(item.text)
        elif isinstance(item, Finish):
            self.finish = item
        return item

    async def end(self, status: str, request_id: str = "") -> None:
        """Close the upstream (a client that left cancels it) and write the ledger. Once."""
        if self.ended:
            return
        self.ended = True
        try:
            close = getattr(self.items, "aclose", None)
            if close is not None:
                await close()
            if self.client is not None:
                await self.client.aclose()
        except Exception:
            log.warning("api %s: closing the provider stream failed", self.id, exc_info=True)
        ended = time.monotonic()
        finish_sync = sync_to_async(_finish_sync)
        try:
            await asyncio.shield(finish_sync(
                self.prepared, status=status, finish=self.finish, text=self.text,
                request_id=(self.finish.request_id if self.finish else None) or request_id,
                ttft_ms=None if self.first_token is None else round(
                    (self.first_token - self.started) * 1000),
                duration_ms=round((ended - self.started) * 1000)))
        except Exception:
            log.error("api %s: could not record usage", self.id, exc_info=True)
        log.info("api completion %s model=%s status=%s chars=%d", self.id, self.slug, status,
                 len(self.text))

    def abandon(self) -> None:
        """From a sync context (the response's close): end a stream nobody iterated."""
        if not self.ended:
            async_to_sync(self.end)("stopped")

    # --- shapes -------------------------------------------------------------------------------
    def finish_reason(self) -> str:
        reason = self.finish.reason if self.finish else "stop"
        return FINISH_REASONS.get(reason or "stop", "stop")

    def usage(self) -> dict[str, int]:
        usage = self.finish.usage if self.finish else None
        prompt = (usage.prompt_tokens if usage else None) or 0
        completion = (usage.completion_tokens if usage else None) or 0
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def body(self, finish_reason: str) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.slug,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text},
                             "logprobs": None, "finish_reason": finish_reason}],
                "usage": self.usage()}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None,
              include_usage: bool = False) -> bytes:
        payload: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.slug,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}]}
        if include_usage:
            payload["usage"] = None
        return event(payload)

    def usage_chunk(self) -> bytes:
        return event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                      "model": self.slug, "choices": [], "usage": self.usage()})

    # --- the two answers ----------------------------------------------------------------------
    async def collect(self) -> HttpResponse:
        """Non-stream: the whole answer as one chat.completion, or an HTTP error."""
        status, request_id = "failed", ""
        try:
            item = await self.open()
            while not isinstance(item, Finish):
                item = await self.next()
            status = "complete"
            return JsonResponse(self.body(self.finish_reason()))
        except ProviderError as exc:
            request_id = exc.request_id or ""
            if exc.kind == ErrorKind.CONTENT_FILTERED and self.parts:
                status = "complete"  # F22: a filtered answer is an ending
                return JsonResponse(self.body("content_filter"))
            return provider_error(exc).response()
        except asyncio.CancelledError:
            status = "stopped"
            raise
        except Exception:
            log.error("api %s failed", self.id, exc_info=True)
            return internal().response()
        finally:
            await self.end(status, request_id)

    async def events(self, first: StreamItem, include_usage: bool) -> AsyncIterator[bytes]:
        """Stream: chunks, the finish chunk, usage if asked, [DONE]. Errors go in-stream."""
        status = "stopped"  # what a client that leaves (GeneratorExit, cancel) leaves behind
        request_id = ""
        try:
            yield self.chunk({"role": "assistant", "content": ""}, include_usage=include_usage)
            item = first
            while not isinstance(item, Finish):
                if isinstance(item, Delta) and item.text:
                    yield self.chunk({"content": item.text}, include_usage=include_usage)
                item = await self.next()
            yield self.chunk({}, self.finish_reason(), include_usage=include_usage)
            if include_usage:
                yield self.usage_chunk()
            status = "complete"
        except ProviderError as exc:
            request_id = exc.request_id or ""
            if exc.kind == ErrorKind.CONTENT_FILTERED:
                status = "complete"
                yield self.chunk({}, "content_filter", include_usage=include_usage)
            else:
                status = "failed"
                # The ledger first: a client stops reading at the error event.
                await self.end(status, request_id)
                yield event(provider_error(exc).body())
        except Exception:
            log.error("api %s failed mid-stream", self.id, exc_info=True)
            status = "failed"
            await self.end(status, request_id)
            yield event(internal().body())
        finally:
            await self.end(status, request_id)
        yield b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class EventStream(StreamingHttpResponse):
    """text/event-stream that ends its completion even if it is closed without being read."""

    def __init__(self, completion: Completion, first: StreamItem, include_usage: bool) -> None:
        super().__init__(completion.events(first, include_usage),
                         content_type="text/event-stream; charset=utf-8")
        self.completion = completion
        self["X-Accel-Buffering"] = "no"  # nginx: pass chunks on at once

    def close(self) -> None:
        super().close()
        self.completion.abandon()


# --- /v1/chat/completions ---------------------------------------------------------------------
@api_endpoint("POST")
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    user = await authenticate(request)
    body = await sync_to_async(read_json, thread_sensitive=False)(request)
    spec = parse_request(body)
    prepared = await sync_to_async(prepare)(user, spec)
    completion = Completion(prepared)
    if not spec.stream:
        return await completion.collect()
    try:
        first = await completion.open()
    except ProviderError as exc:
        await completion.end("failed", exc.request_id or "")
        return provider_error(exc).response()
    except asyncio.CancelledError:
        await completion.end("stopped")
        raise
    except Exception:
        log.error("api %s failed before the stream", completion.id, exc_info=True)
        await completion.end("failed")
        return internal().response()
    return EventStream(completion, first, spec.include_usage)
