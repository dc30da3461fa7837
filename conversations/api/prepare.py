"""Everything a /v1 completion needs before the provider is called: the model the user may
use, the shared image rules and limits, the merged parameters, the images through the one
validator, and the ledger row. Refusals charge nothing and store nothing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction

from conversations.answers import drain, fallback
from conversations.answers.budget import Fitted, check_prompt, fit
from conversations.answers.history import Turn, merge_params, one_image
from conversations.api import tools
from conversations.api.errors import ApiError, bad, service_error
from conversations.api.requests import (
    IGNORABLE,
    MAX_IMAGES_PER_REQUEST,
    NATIVE_PARAMS,
    NEUTRAL_VALUES,
    OPENAI_PARAMS,
    Spec,
)
from conversations.errors import ServiceError
from conversations.images import attachments
from conversations.images.rules import check_image_counts
from conversations.models import Attachment, UsageRecord
from conversations.usage import accounting
from providers.base import ChatRequest, ProviderError, Role
from providers.catalogue import TOOL_KINDS
from providers.fallbacks import chain
from providers.models import ModelConfig


def find_model(user: Any, slug: Any) -> ModelConfig:
    model = None
    if isinstance(slug, str) and slug:
        model = ModelConfig.objects.visible_to(user).filter(slug=slug).first()
    if model is None:
        # Unknown and not-allowed look the same: ids of restricted models reveal nothing.
        raise ApiError(404, "model_not_found",
                       f"The model {str(slug)[:100]!r} does not exist or you do not have "
                       "access to it. GET /v1/models lists yours.", param="model")
    return model


@dataclass
class Prepared:
    model: ModelConfig
    request: ChatRequest
    record_id: int
    attachment_ids: list[uuid.UUID]
    prompt_chars: int
    dropped: int = 0  # earlier messages the context budget left out
    # With `"fallback": true`: what another model needs to take over (fall_back below).
    spec: Spec | None = None
    images: list[list[Attachment]] = field(default_factory=list)
    fallbacks: list[ModelConfig] = field(default_factory=list)
    fallback_from: ModelConfig | None = None  # the model first asked, once another answers


def model_params(model: ModelConfig, options: dict[str, Any]) -> dict[str, Any]:
    """The client's values mapped onto our names and merged over the model's defaults."""
    specs = model.param_specs()
    requested: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue  # "not set", whatever the field
        if name in IGNORABLE and name not in NATIVE_PARAMS:
            if not IGNORABLE[name](value):
                raise bad("unsupported_parameter",
                          f"'{name}' = {json.dumps(value)[:60]} is not supported here.", name)
            continue
        if name == "user" and "user_id" not in specs:
            if not isinstance(value, str):
                raise bad("invalid_type", "'user' must be a string.", name)
            continue  # OpenAI's `user`: passed on where the vendor has a place for it
        ours = OPENAI_PARAMS.get(name) or (name if name in NATIVE_PARAMS else None)
        if ours is None:
            raise bad("unrecognized_parameter",
                      f"Unrecognized request argument supplied: {name[:60]}.", name[:60])
        if ours not in specs:
            if name in NEUTRAL_VALUES and NEUTRAL_VALUES[name](value):
                continue
            accepted = ", ".join(sorted(_openai_names(specs))) or "none"
            raise bad("unsupported_parameter",
                      f"'{name}' is not supported by {model.slug}; it accepts: {accepted}.",
                      name)
        try:  # one at a time, so that the refusal names the client's own field
            merge_params(model, request={ours: value})
        except ProviderError as exc:
            raise bad("invalid_value", exc.message.replace(repr(ours), repr(name)),
                      name) from None
        requested[ours] = value
    return merge_params(model, request=requested)


def _openai_names(specs: dict[str, Any]) -> set[str]:
    names = {openai for openai, ours in OPENAI_PARAMS.items() if ours in specs}
    return names | set(specs)


def check_tools(model: ModelConfig, spec: Spec) -> None:
    """Tools, tool calls and tool results only for a model whose catalogue entry takes them."""
    fields = spec.uses_tools
    if fields and not (model.supports_tools and model.provider.kind in TOOL_KINDS):
        raise tools.unsupported(model, fields[0])


def check_images(model: ModelConfig, spec: Spec) -> None:
    """The composer's image rules (images/rules.py) for every user message, and a bound on
    the work one request may ask for."""
    counts = [len(m.images) for m in spec.messages if m.role == "user"]
    try:
        check_image_counts(model, counts)
    except ServiceError as exc:
        raise service_error(exc) from None
    if sum(counts) > MAX_IMAGES_PER_REQUEST:
        raise bad("too_many_images", f"At most {MAX_IMAGES_PER_REQUEST} images per request.",
                  "messages")


def _store_images(user: Any, spec: Spec) -> list[list[Attachment]]:
    """Every image through the one validator (stored until the call ends); nothing stays
    stored when one is refused. The images of each message, in order."""
    stored: list[Attachment] = []
    per_message: list[list[Attachment]] = []
    try:
        for message in spec.messages:
            own = []
            for data, mime in message.images:
                upload = SimpleUploadedFile("api-image", data, content_type=mime)
                attachment = attachments.attachment_create(user, upload)
                stored.append(attachment)
                own.append(attachment)
            per_message.append(own)
    except attachments.UploadRefused as exc:
        Attachment.objects.filter(pk__in=[a.pk for a in stored]).delete()
        raise bad("invalid_image", exc.message, "messages") from None
    except BaseException:
        Attachment.objects.filter(pk__in=[a.pk for a in stored]).delete()
        raise
    return per_message


def _shape(model: ModelConfig, spec: Spec, images: list[list[Attachment]],
           params: dict[str, Any]) -> Fitted:
    """The answer core's rules for what a model is sent: one image, the context budget."""
    turns: list[Turn] = []
    for message, own in zip(spec.messages, images, strict=True):
        role: Role = ("user" if message.role == "user" else
                      "tool" if message.role == "tool" else "assistant")
        turns.append((role, message.text, own))
    try:
        wire = one_image(model, turns)
        if spec.uses_tools:  # the tool fields ride along; fit() keeps a call with its results
            wire = tuple(replace(w, tool_calls=m.tool_calls, tool_call_id=m.tool_call_id)
                         for w, m in zip(wire, spec.messages, strict=True))
        return fit(model, spec.system, wire, params)
    except ServiceError as exc:
        raise service_error(exc) from None


def _check_request(user: Any, model: ModelConfig, spec: Spec) -> None:
    """The limits, then whether the prompt alone fits the model (ApiError when refused)."""
    try:
        accounting.check_limits(user, prompt_chars=spec.prompt_chars)
        check_prompt(model, spec.system, spec.messages[-1].text)
    except ServiceError as exc:
        raise service_error(exc) from None


def prepare(user: Any, spec: Spec) -> Prepared:
    """Every check before the provider is called, then the ledger row. Refusals charge nothing."""
    try:
        drain.check_not_draining()
    except ServiceError as exc:
        raise service_error(exc, param=None) from None
    model = find_model(user, spec.model)
    check_tools(model, spec)
    check_images(model, spec)
    params = model_params(model, spec.options)
    with_images = any(m.images for m in spec.messages)
    if with_images:  # refused before the images are stored and decoded
        _check_request(user, model, spec)
    images = _store_images(user, spec)
    stored = [a.pk for own in images for a in own]
    try:
        fitted = _shape(model, spec, images, params) if with_images else None
        with transaction.atomic():
            # As one step with the ledger row: the web page and /v1 share the limits. Without
            # images this is the only check (the limits are read once, not twice), and the prompt's
            # own checks follow the limits as they do above.
            accounting.lock_user(user)
            if fitted is None:
                _check_request(user, model, spec)
                fitted = _shape(model, spec, images, params)
            else:
                accounting.check_limits(user, prompt_chars=spec.prompt_chars)
            record = accounting.record_start(user, model, source=UsageRecord.Source.API)
    except ServiceError as exc:
        Attachment.objects.filter(pk__in=stored).delete()
        raise service_error(exc) from None
    except BaseException:
        Attachment.objects.filter(pk__in=stored).delete()
        raise
    request = ChatRequest(model=model.model_id, messages=fitted.messages, system=spec.system,
                          params=fitted.params, tools=spec.tools.sent if spec.tools else ())
    prepared = Prepared(model=model, request=request, record_id=record.pk,
                        attachment_ids=stored, prompt_chars=spec.prompt_chars,
                        dropped=fitted.dropped)
    if spec.fallback:
        prepared.spec, prepared.images = spec, images
        prepared.fallbacks = chain(model, user)
        reason = fallback.open_reason(model, prepared.fallbacks)
        if reason:  # its provider's breaker is open: start on a fallback at once
            fall_back(prepared, reason)
    return prepared


def _request_for(model: ModelConfig, spec: Spec, images: list[list[Attachment]]
                 ) -> tuple[ChatRequest, int]:
    """The same checks and shaping as `prepare`, for another model (ApiError: it refuses)."""
    check_tools(model, spec)
    check_images(model, spec)
    params = model_params(model, spec.options)
    try:
        check_prompt(model, spec.system, spec.messages[-1].text)
    except ServiceError as exc:
        raise service_error(exc) from None
    fitted = _shape(model, spec, images, params)
    return ChatRequest(model=model.model_id, messages=fitted.messages, system=spec.system,
                       params=fitted.params, tools=spec.tools.sent if spec.tools else ()
                       ), fitted.dropped


def fall_back(prepared: Prepared, reason: str) -> bool:
    """Move a prepared call to the first fallback that takes the request (sync): the model,
    the request and the ledger row's model change. False when none does."""
    if prepared.spec is None:
        return False
    usable = fallback.closed(prepared.fallbacks) or list(prepared.fallbacks)
    for model in usable:
        prepared.fallbacks.remove(model)
        try:
            request, dropped = _request_for(model, prepared.spec, prepared.images)
        except ApiError:
            continue  # this model refuses the request (a parameter, an image, its window)
        prepared.fallback_from = prepared.fallback_from or prepared.model
        prepared.model, prepared.request, prepared.dropped = model, request, dropped
        UsageRecord.objects.filter(pk=prepared.record_id).update(model=model)
        return True
    return False
