"""/manage/providers/: each provider's status from its last call or test, at a glance.

Answers run through the local emulators over real sockets (tests/conftest.py `emulated`); the
page is read as a superuser would, and refused to everyone else."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import openai
import pytest
from django.test import Client
from django.utils import timezone

from conversations.chat import services
from conversations.models import AuditEvent, Message, MessageStatus, UsageRecord
from providers import status
from providers.emulators import Fault
from providers.models import Provider
from tests.api.conftest import openai_client
from tests.support import model, post_message, seed_catalogue, signed_in

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "/manage/providers/"


def _card(html: str, kind: str) -> str:
    """The provider's card (its <section>) in the page."""
    match = re.search(rf'<section class="card provider-card" id="provider-{kind}".*?</section>',
                      html, re.S)
    assert match, f"no card for {kind}"
    return match.group(0)


def _answer(owner: Any, text: str = "Tell me about llamas", slug: str = "llama-3.2-3b") -> Message:
    conversation = services.conversation_create(owner, model=model(slug))
    response = post_message(signed_in(owner), conversation, text)
    assert response.status_code == 201, response.content
    return Message.objects.get(pk=response.json()["assistant"]["id"])


def test_one_failing_answer_shows_the_provider_failing_on_the_page(
        emulated: Any, owner: Any, admin_user: Any) -> None:
    before = _card(signed_in(admin_user).get(PAGE).content.decode(), "cloudflare")
    assert 'data-status="untested"' in before

    emulated.script("cloudflare", "500-before", times=None)
    answer = _answer(owner)
    assert answer.status == MessageStatus.FAILED

    card = _card(signed_in(admin_user).get(PAGE).content.decode(), "cloudflare")
    assert 'data-status="failing"' in card
    assert "Failing since" in card
    assert "unavailable" in card  # the error kind
    # The other providers were not called: they say so.
    assert 'data-status="untested"' in _card(signed_in(admin_user).get(PAGE).content.decode(),
                                             "qianfan")


def test_the_failing_clock_starts_at_the_first_failure_and_a_success_clears_it(
        emulated: Any, owner: Any) -> None:
    emulated.script("cloudflare", "500-before", times=None)
    _answer(owner)
    first = Provider.objects.get(kind="cloudflare").failing_since
    assert first is not None
    _answer(owner)
    provider = Provider.objects.get(kind="cloudflare")
    assert provider.failing_since == first  # still the first failure's time
    assert provider.last_error_kind == "unavailable"

    emulated.reset()
    assert _answer(owner).status == MessageStatus.COMPLETE
    provider = Provider.objects.get(kind="cloudflare")
    assert provider.last_status == Provider.Status.OK
    assert provider.failing_since is None and provider.last_error == ""


def test_a_failure_through_the_api_door_is_recorded_the_same_way(
        emulated: Any, api_server: Any, owner: Any, make_token: Any) -> None:
    emulated.script("qianfan", Fault("error-after", n=2), times=None)
    client = openai_client(api_server, make_token(owner))
    with pytest.raises(openai.APIError):
        for _chunk in client.chat.completions.create(
                model="llama-3-70b", stream=True,
                messages=[{"role": "user", "content": "Tell me about llamas"}]):
            pass
    provider = Provider.objects.get(kind="qianfan")
    assert provider.last_status == Provider.Status.ERROR
    assert provider.last_error_kind == "unavailable"


def test_a_refused_request_or_filtered_content_says_nothing_about_the_provider(
        emulated: Any, owner: Any) -> None:
    seed_catalogue()
    qianfan = Provider.objects.get(kind="qianfan")
    status.record_success(qianfan.pk)
    emulated.script("qianfan", Fault("content-filter-after", n=2), times=None)
    _answer(owner, slug="llama-3-70b")
    status.record_call(qianfan.pk, ok=False, kind="bad_request", message="too long")
    assert Provider.objects.get(pk=qianfan.pk).last_status == Provider.Status.OK


def test_a_success_after_a_recorded_success_writes_nothing_but_one_after_a_failure_does(
        emulated: Any, django_assert_num_queries: Any) -> None:
    provider = Provider.objects.get(kind="cloudflare")
    status.record_success(provider.pk)
    with django_assert_num_queries(0):
        status.record_success(provider.pk)  # the row already says ok
    status.record_failure(provider.pk, "timeout", "no answer")
    status.record_success(provider.pk)
    provider.refresh_from_db()
    assert provider.last_status == Provider.Status.OK and provider.failing_since is None


def test_the_last_error_never_shows_a_key(emulated: Any, admin_user: Any) -> None:
    provider = Provider.objects.get(kind="dashscope")
    key = provider.get_credentials()["api_key"]
    status.record_failure(provider.pk, "auth", f"401: the key {key} was refused")
    html = signed_in(admin_user).get(PAGE).content.decode()
    assert key not in html
    assert "[REDACTED]" in _card(html, "dashscope")
    assert key not in Provider.objects.get(pk=provider.pk).last_error


def test_the_median_time_to_first_token_covers_the_last_day(
        emulated: Any, owner: Any, admin_user: Any) -> None:
    llama = model("llama-3.2-3b")
    for ttft in (100, 300, 900):
        UsageRecord.objects.create(user=owner, model=llama, ttft_ms=ttft, status="complete")
    old = UsageRecord.objects.create(user=owner, model=llama, ttft_ms=99_999)
    UsageRecord.objects.filter(pk=old.pk).update(started_at=timezone.now() - timedelta(days=2))
    card = _card(signed_in(admin_user).get(PAGE).content.decode(), "cloudflare")
    assert re.search(r"data-median-ttft>\s*300 ms", card), card
    assert "no answers" in _card(signed_in(admin_user).get(PAGE).content.decode(), "qianfan")


def test_the_page_lists_the_models_each_provider_serves(emulated: Any, admin_user: Any) -> None:
    html = signed_in(admin_user).get(PAGE).content.decode()
    card = _card(html, "cloudflare")
    assert model("llama-3.2-3b").display_name in card
    assert model("llama-3.2-11b-vision").display_name in card
    assert model("llama-3-70b").display_name not in card


def test_test_connection_records_ok_and_says_so(emulated: Any, admin_user: Any) -> None:
    client = signed_in(admin_user)
    response = client.post("/manage/providers/cloudflare/test/", follow=True)
    assert response.status_code == 200
    assert "connection works" in response.content.decode()
    assert 'data-status="ok"' in _card(response.content.decode(), "cloudflare")


def test_a_failing_test_connection_shows_the_error_without_the_key(
        emulated: Any, admin_user: Any) -> None:
    provider = Provider.objects.get(kind="qianfan")
    wrong = "wrong-secret-key-123456"
    provider.set_credentials({**provider.get_credentials(), "secret_key": wrong})
    provider.save()
    response = signed_in(admin_user).post("/manage/providers/qianfan/test/", follow=True)
    html = response.content.decode()
    assert "the test failed (auth)" in html
    assert 'data-status="failing"' in _card(html, "qianfan")
    assert wrong not in html


def test_test_connection_needs_a_post_with_csrf(emulated: Any, admin_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.get("/manage/providers/cloudflare/test/").status_code == 405
    assert client.post("/manage/providers/cloudflare/test/").status_code == 403
    assert Provider.objects.get(kind="cloudflare").last_checked_at is None


@pytest.mark.parametrize("url", [PAGE, "/manage/providers/cloudflare/",
                                 "/manage/providers/cloudflare/test/"])
def test_only_superusers_reach_the_providers_pages(
        emulated: Any, owner: Any, client: Client, url: str) -> None:
    assert client.get(url).status_code == 302  # anonymous: to the sign-in page
    owner.is_staff = True  # staff with every provider permission is still no superuser
    owner.save()
    assert signed_in(owner).get(url).status_code in {404, 405}
    assert signed_in(owner).post(url).status_code == 404
    assert Provider.objects.get(kind="cloudflare").last_checked_at is None


def test_an_unknown_provider_is_not_found(emulated: Any, admin_user: Any) -> None:
    assert signed_in(admin_user).get("/manage/providers/openai/").status_code == 404
    assert signed_in(admin_user).post("/manage/providers/openai/test/").status_code == 404


# --- settings and keys ------------------------------------------------------------------------
def _form(provider: Provider, **values: str) -> dict[str, str]:
    data = {"name": provider.name, "base_url": provider.base_url, "enabled": "on"}
    data.update(values)
    return data


def test_the_settings_page_shows_only_a_mask_and_empty_key_inputs(
        emulated: Any, admin_user: Any) -> None:
    provider = Provider.objects.get(kind="cloudflare")
    token = provider.get_credentials()["api_token"]
    response = signed_in(admin_user).get("/manage/providers/cloudflare/")
    html = response.content.decode()
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    assert token not in html and provider.credentials_encrypted not in html
    overview = signed_in(admin_user).get(PAGE).content.decode()
    assert provider.credentials_encrypted[:40] not in overview and token not in overview
    assert 'name="cred_api_token"' in html and 'type="password"' in html
    assert re.search(r'name="cred_api_token"[^>]*value=', html) is None


def test_an_empty_key_field_keeps_the_key_and_a_new_one_replaces_it(
        emulated: Any, admin_user: Any) -> None:
    provider = Provider.objects.get(kind="qianfan")
    before = provider.get_credentials()
    client = signed_in(admin_user)
    response = client.post("/manage/providers/qianfan/", _form(provider, name="Qianfan (prod)"))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.name == "Qianfan (prod)" and provider.get_credentials() == before

    client.post("/manage/providers/qianfan/", _form(provider, cred_secret_key="new-sk-value-1"))
    provider.refresh_from_db()
    assert provider.get_credentials() == {**before, "secret_key": "new-sk-value-1"}
    event = AuditEvent.objects.filter(action="provider.credentials_changed").order_by("pk").last()
    assert event is not None and event.actor_id == admin_user.pk
    assert "new-sk-value-1" not in str(event.details)


def test_a_base_url_to_a_foreign_host_is_refused_and_nothing_changes(
        emulated: Any, admin_user: Any) -> None:
    provider = Provider.objects.get(kind="dashscope")
    response = signed_in(admin_user).post(
        "/manage/providers/dashscope/", _form(provider, base_url="https://evil.example/api/v1"))
    assert response.status_code == 400
    assert "not an allowed host" in response.content.decode()
    assert Provider.objects.get(pk=provider.pk).base_url == provider.base_url


def test_the_pages_speak_the_readers_language(emulated: Any, admin_user: Any,
                                              settings: Any) -> None:
    client = signed_in(admin_user)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    providers = client.get(PAGE).content.decode()
    assert "测试连接" in providers and "首个 token 的中位等待时间" in providers
    models = client.get("/manage/models/").content.decode()
    assert "各团队的默认模型" in models and "Default model per team" not in models
