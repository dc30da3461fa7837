"""The same provider status outside the providers page: in /healthz (superusers only) and in
`manage.py providers_check`."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from conversations.chat import services
from conversations.models import Message, MessageStatus
from providers.models import Provider
from tests.support import model, post_message, signed_in

pytestmark = pytest.mark.django_db(transaction=True)


def _failed_answer(emulated: Any, owner: Any) -> None:
    emulated.script("cloudflare", "500-before", times=None)
    conversation = services.conversation_create(owner, model=model("llama-3.2-3b"))
    response = post_message(signed_in(owner), conversation, "Tell me about llamas")
    answer = Message.objects.get(pk=response.json()["assistant"]["id"])
    assert answer.status == MessageStatus.FAILED
    assert Provider.objects.get(kind="cloudflare").last_status == Provider.Status.ERROR


def test_healthz_shows_a_superuser_the_failing_provider(
        emulated: Any, owner: Any, admin_user: Any) -> None:
    _failed_answer(emulated, owner)
    response = signed_in(admin_user).get("/healthz")
    assert response.status_code == 200  # a failing provider leaves the site healthy
    providers = {p["kind"]: p for p in response.json()["providers"]}
    assert providers["cloudflare"]["status"] == "failing"
    assert providers["cloudflare"]["last_error_kind"] == "unavailable"
    assert providers["cloudflare"]["failing_since"]
    assert providers["qianfan"]["status"] == "untested"
    body = response.content.decode()
    for provider in Provider.objects.all():
        for secret in provider.get_credentials().values():
            assert secret not in body
        assert provider.base_url not in body


def test_healthz_shows_no_provider_to_anyone_else(
        emulated: Any, owner: Any, client: Client) -> None:
    _failed_answer(emulated, owner)
    owner.is_staff = True
    owner.save()
    for who in (client, signed_in(owner)):
        body = who.get("/healthz").json()
        assert "providers" not in body and body["status"] == "ok"


def test_providers_check_status_prints_what_the_page_shows(
        emulated: Any, owner: Any) -> None:
    _failed_answer(emulated, owner)
    calls = len(emulated.requests)
    out = io.StringIO()
    call_command("providers_check", "--status", stdout=out)
    lines = {line.split()[0]: line for line in out.getvalue().splitlines()[2:] if line.strip()}
    assert lines["cloudflare"].split()[1] == "failing"
    assert "unavailable" in lines["cloudflare"]
    assert lines["qianfan"].split()[1] == "untested"
    assert len(emulated.requests) == calls  # --status calls nothing


def test_providers_check_records_what_its_calls_found(emulated: Any) -> None:
    emulated.script("qianfan", "500-before", times=None)
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("providers_check", stdout=out)
    assert Provider.objects.get(kind="qianfan").last_status == Provider.Status.ERROR
    assert Provider.objects.get(kind="cloudflare").last_status == Provider.Status.OK
    status_table = out.getvalue().split("\n\n")[1]
    assert "qianfan" in status_table and "failing" in status_table
