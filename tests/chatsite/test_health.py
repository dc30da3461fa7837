"""GET /healthz reports each dependency; 503 when one is down."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from django.test import Client

from tests.conftest import ROOT, ServerProcess, child_env, free_port


@pytest.mark.django_db
def test_it_is_healthy_when_everything_answers(client: Client, settings: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["channel_layer"]["ok"]
    assert ("broker" in body["checks"]) == bool(settings.REDIS_URL)
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_it_is_reachable_without_signing_in_even_on_an_empty_site(client: Client) -> None:
    assert client.get("/healthz").status_code == 200


@pytest.mark.django_db
def test_it_reports_a_dead_channel_layer_with_503(client: Client, settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]}}}
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    try:
        response = client.get("/healthz")
    finally:
        channel_layers.backends.clear()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["channel_layer"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.django_db(transaction=True)
def test_a_server_whose_database_and_broker_are_down_answers_503() -> None:
    dead = free_port()
    env = child_env(DATABASE_URL=f"postgres://nobody@127.0.0.1:{dead}/none",
                    REDIS_URL=f"redis://127.0.0.1:{dead}/0")
    server = ServerProcess(env, ROOT / "test-artifacts" / "logs" / "daphne-dead-deps.log")
    try:
        status, body = _get(server.url + "/healthz")
    finally:
        server.stop()
    assert status == 503
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["channel_layer"]["ok"] is False
