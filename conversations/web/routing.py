from __future__ import annotations

from django.urls import path

from conversations.web import consumers

websocket_urlpatterns = [
    path("ws/ping/", consumers.PingConsumer.as_asgi()),
    path("ws/c/<uuid:conversation_id>/", consumers.ConversationConsumer.as_asgi()),
    path("ws/s/<str:token>/", consumers.ShareConsumer.as_asgi()),
]
