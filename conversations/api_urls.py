"""The OpenAI-compatible API, included at "v1/" (docs/api.md)."""

from __future__ import annotations

from django.urls import path, re_path

from conversations import api

urlpatterns = [
    path("models", api.models, name="api_models"),
    path("models/<path:model_id>", api.model_detail, name="api_model"),
    path("chat/completions", api.chat_completions, name="api_chat_completions"),
    re_path(r"^(?P<rest>.*)$", api.unknown, name="api_unknown"),
]
