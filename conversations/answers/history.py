"""What a model is sent: the history of an answer's branch, its one image, the merged parameters,
all within the model's context budget (budget.py). One place for each rule both doors share.

- Parameters merge as model defaults <- conversation <- request (stored layers are filtered to
  what the model takes, a request's own values are range-checked).
- Images: a vision model is sent exactly one image, the latest one of the history that is still
  stored (DashScope takes one per request; Cloudflare's vision model reads one). Other user
  turns that had images keep their text with an "[image]" marker. A model that needs an image
  (`requires_image`) and finds none left is refused with `image_required`.
- Turns left out: a prompt whose answer ended with no text (failed, stopped before the first
  word), when the conversation went on after it: it is sent once, as the later prompt, not
  twice; and turns a vendor's moderation flagged (`context_excluded`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.utils.translation import gettext as _

from conversations.answers.budget import fit
from conversations.documents.context import for_prompt as documents_context
from conversations.errors import ServiceError
from conversations.images.attachments import fitted_part
from conversations.models import Attachment, Message
from conversations.tree import branch_has, history_for
from providers.base import ChatRequest, ImagePart, Role
from providers.base import Message as WireMessage
from providers.models import ModelConfig
from providers.params import validate_params

IMAGE_MARKER = "[image]"


def merge_params(model: ModelConfig, *, conversation: Mapping[str, Any] | None = None,
                 request: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Model defaults <- conversation <- request, for this model.

    Stored layers (the admin's defaults, a conversation's settings) may hold a parameter of
    another model the conversation used before: it is left out. A request's own values are
    checked against the model's ranges (ProviderError(BAD_REQUEST) names the one refused).
    """
    specs = model.param_specs()
    merged = {k: v for k, v in (model.default_params or {}).items() if k in specs}
    merged.update({k: v for k, v in (conversation or {}).items() if k in specs})
    if request:
        merged.update(validate_params(model.model_id, request))
    return merged


def image_required(model: ModelConfig) -> ServiceError:
    return ServiceError("image_required", _(
        "%(model)s needs an image in the conversation, and none is stored any more: attach an "
        "image again.") % {"model": model.display_name})


def with_marker(text: str) -> str:
    """A user turn whose image is not sent: its text, marked."""
    return f"{IMAGE_MARKER} {text}" if text else IMAGE_MARKER


Turn = tuple[Role, str, Sequence[Attachment]]


def one_image(model: ModelConfig, turns: Sequence[Turn]) -> tuple[WireMessage, ...]:
    """Wire messages carrying one image: the latest one still stored, fitted to the model.

    Text models get none. Every other turn that had images keeps its text with the marker.
    A model that needs an image and finds none stored is refused (`image_required`).
    """
    chosen: tuple[int, ImagePart] | None = None
    if model.vision:
        for index in range(len(turns) - 1, -1, -1):
            for attachment in reversed(turns[index][2]):
                part = fitted_part(attachment, model)
                if part is not None:
                    chosen = (index, part)
                    break
            if chosen is not None:
                break
    if model.requires_image and chosen is None:
        raise image_required(model)
    wire = []
    for index, (role, text, images) in enumerate(turns):
        if chosen is not None and index == chosen[0]:
            wire.append(WireMessage(role=role, text=text, images=(chosen[1],)))
        else:
            wire.append(WireMessage(role=role, text=with_marker(text) if images else text))
    return tuple(wire)


@dataclass(frozen=True)
class Shaped:
    """A web answer's request, which stored messages its wire messages are, and how many
    earlier messages the budget left out."""

    request: ChatRequest
    sources: tuple[uuid.UUID, ...]
    dropped: int


def _role(message: Message) -> Role:
    return "user" if message.role == Message.Role.USER else "assistant"


def _usable(history: list[Message]) -> list[Message]:
    """The branch without flagged turns and without prompts whose answer wrote nothing."""
    kept: list[Message] = []
    for index, message in enumerate(history):
        if message.context_excluded:
            continue
        if message.role == Message.Role.ASSISTANT and not message.content:
            # An answer that wrote nothing: leave it out, and its prompt with it when another
            # prompt follows (that prompt is what the user asked next).
            if kept and kept[-1].role == Message.Role.USER and index + 1 < len(history):
                kept.pop()
            continue
        kept.append(message)
    return kept


def _attachments_by_message(branch: list[Message]) -> dict[uuid.UUID, list[Attachment]]:
    found: dict[uuid.UUID, list[Attachment]] = {}
    for attachment in Attachment.objects.filter(
            message_id__in=[m.pk for m in branch if m.role == Message.Role.USER]).order_by(
            "created_at"):
        if attachment.message_id is not None:
            found.setdefault(attachment.message_id, []).append(attachment)
    return found


def request_for(answer: Message) -> Shaped:
    """The request for a web answer: its branch up to its prompt, fitted to the model."""
    conversation = answer.conversation
    model = answer.model or conversation.model
    branch = history_for(answer)
    history = _usable(branch)
    images = _attachments_by_message(branch) if branch_has(branch, "has_images") else {}
    kept = {m.pk for m in history}
    carried: list[Attachment] = []  # images of prompts left out go with the next one sent
    turns: list[Turn] = []
    for message in branch:
        own = images.get(message.pk, [])
        if message.pk not in kept:
            carried += own
            continue
        if message.role == Message.Role.USER and carried:
            own, carried = [*carried, *own], []
        turns.append((_role(message), message.content, own))
    if (answer.parent is not None and turns and turns[-1][0] == "user"
            and branch_has(branch, "has_documents")):
        # Documents of the branch, quoted before the latest question (documents/context.py).
        quoted = documents_context(model, conversation.system_prompt, answer.parent,
                                   (conversation.params or {}).get("max_tokens"),
                                   branch=[m.pk for m in branch]).text
        if quoted:
            turns[-1] = ("user", quoted + turns[-1][1], turns[-1][2])
    wire = one_image(model, turns)
    params = merge_params(model, conversation=conversation.params)
    fitted = fit(model, conversation.system_prompt, wire, params)
    sent = {id(m) for m in fitted.messages}
    sources = tuple(m.pk for m, w in zip(history, wire, strict=True) if id(w) in sent)
    return Shaped(ChatRequest(model=model.model_id, messages=fitted.messages,
                              system=conversation.system_prompt, params=fitted.params),
                  sources=sources, dropped=fitted.dropped)
