"""The OpenAI-compatible API, included at "v1/" (docs/api.md)."""

from __future__ import annotations

from django.urls import path, re_path

from conversations.api import views

urlpatterns = [
    path("models", views.models, name="api_models"),
    path("models/<path:model_id>", views.model_detail, name="api_model"),
    path("chat/completions", views.chat_completions, name="api_chat_completions"),
    re_path(r"^(?P<rest>.*)$", views.unknown, name="api_unknown"),
]
