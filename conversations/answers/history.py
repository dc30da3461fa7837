"""What a model is sent: the history of an answer's branch and the merged parameters.

One place for each rule both doors share: parameters merge as model defaults <- conversation
<- request (stored layers are filtered to what the model takes, a request's own values are
range-checked), and a web answer's history is read once, here, from the message tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conversations.images.attachments import image_parts_for
from conversations.models import Message
from conversations.tree import history_for
from providers.base import ChatRequest, Role
from providers.base import Message as WireMessage
from providers.models import ModelConfig
from providers.params import validate_params


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


def _role(message: Message) -> Role:
    return "user" if message.role == Message.Role.USER else "assistant"


def request_for(answer: Message) -> ChatRequest:
    """The request for a web answer: its branch up to its prompt, images fitted to the model."""
    conversation = answer.conversation
    model = answer.model or conversation.model
    wire = tuple(
        WireMessage(role=_role(m), text=m.content,
                    images=image_parts_for(m, model) if m.role == Message.Role.USER else ())
        for m in history_for(answer)
    )
    return ChatRequest(model=model.model_id, messages=wire, system=conversation.system_prompt,
                       params=merge_params(model, conversation=conversation.params))
