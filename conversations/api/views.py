"""The OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions (docs/api.md).

One authentication path: `Authorization: Bearer <personal token>`. The session cookie is never
read here, so a browser session cannot drive the API (threat T16), and that is also why the
views are CSRF-exempt. Everything else is the web page's rules, from the same modules: the
models a user may pick (ModelConfig.objects.visible_to), the image rules and the one image
validator, budgets, rate and concurrency limits, and the answer core with its ledger row
(source="api").

Images come only as `data:` URLs. This server never fetches a URL a client gives (T09).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from conversations.api import tokens
from conversations.api.completions import Completion, stream_or_error
from conversations.api.errors import ApiError, internal, unauthorized
from conversations.api.prepare import find_model, prepare
from conversations.api.presets import apply_preset
from conversations.api.requests import parse_request, read_json
from providers.models import ModelConfig

log = logging.getLogger(__name__)

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


@api_endpoint("GET")
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    user = await authenticate(request)
    model = await sync_to_async(find_model)(user, model_id)
    return JsonResponse(_model_object(model))


@api_endpoint("GET", "POST", "PUT", "PATCH", "DELETE")
async def unknown(request: HttpRequest, rest: str = "") -> HttpResponse:
    raise ApiError(404, "unknown_url", f"No endpoint {request.method} {request.path[:200]}. "
                   "This API has GET /v1/models and POST /v1/chat/completions.")


# --- /v1/chat/completions ---------------------------------------------------------------------
@api_endpoint("POST")
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    user = await authenticate(request)
    body = await sync_to_async(read_json, thread_sensitive=False)(request)
    body = await sync_to_async(apply_preset)(user, body)
    spec = parse_request(body)
    prepared = await sync_to_async(prepare)(user, spec)
    completion = Completion(prepared)
    if not spec.stream:
        return await completion.collect()
    return await stream_or_error(completion, spec.include_usage)
