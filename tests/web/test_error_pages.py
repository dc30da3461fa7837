"""Error pages wear the product's layout, in the reader's language, and say what to do next;
scripts and API clients still get JSON. DEBUG is off here (pytest-django's default), as in
production."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.test import Client, RequestFactory
from django.utils import translation

from chatsite import error_pages, urls
from conversations.chat import services
from conversations.models import Conversation
from conversations.sharing import links
from tests.conftest import PASSWORD
from tests.support import model, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _english_afterwards() -> Any:
    yield
    translation.activate(settings.LANGUAGE_CODE)  # a Chinese request leaves it active


def _chat(user: Any) -> Conversation:
    return services.conversation_create(user, model=model(), title="Secret plans")


def _page(response: Any) -> str:
    body = response.content.decode()
    assert response["Content-Type"].startswith("text/html")
    assert 'class="topbar"' in body and "app.css" in body, "not in the product's layout"
    assert "Not Found</h1>" not in body
    return body


def test_the_handlers_are_ours() -> None:
    assert urls.handler400 is error_pages.bad_request
    assert urls.handler403 is error_pages.permission_denied
    assert urls.handler404 is error_pages.page_not_found
    assert urls.handler500 is error_pages.server_error
    assert settings.CSRF_FAILURE_VIEW == "chatsite.error_pages.csrf_failure"
    assert not settings.DEBUG


def test_a_conversation_you_cannot_see_leads_back_to_your_conversations(
        owner: Any, outsider: Any) -> None:
    conversation = _chat(owner)
    response = signed_in(outsider).get(f"/c/{conversation.pk}/")
    assert response.status_code == 404
    body = _page(response)
    assert "Conversation not found" in body
    assert "Back to your conversations" in body and 'href="/"' in body
    assert "Secret plans" not in body
    assert "charlie" in body  # the account menu is there: it is the usual page around it


def test_the_error_page_is_in_chinese_by_header_and_by_cookie(owner: Any,
                                                             outsider: Any) -> None:
    conversation = _chat(owner)
    by_header = signed_in(outsider).get(f"/c/{conversation.pk}/",
                                        HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert by_header.status_code == 404
    body = _page(by_header)
    assert '<html lang="zh-hans">' in body
    assert "找不到这个对话" in body and "返回你的对话" in body
    client = signed_in(outsider)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    assert "找不到这个对话" in _page(client.get(f"/c/{conversation.pk}/"))


def test_a_revoked_share_link_says_to_ask_for_a_new_one(owner: Any) -> None:
    share = links.create_share(owner, _chat(owner))
    links.revoke_share(share, owner)
    response = Client().get(f"/s/{share.token}/")
    assert response.status_code == 404
    body = _page(response)
    assert "This share link no longer works" in body
    assert "Ask the person who shared it with you for a new link." in body
    assert "Sign in" in body and 'href="/accounts/login/"' in body  # not back to a dead link
    zh = Client().get(f"/s/{share.token}/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "这个分享链接已失效" in _page(zh)


def test_closed_signup_says_who_makes_accounts(settings: Any, owner: Any) -> None:
    settings.ALLOW_SIGNUP = False
    response = Client().get("/accounts/signup/")
    assert response.status_code == 404
    body = _page(response)
    assert "Sign-up is closed" in body and "Ask an administrator for an account" in body
    assert "/accounts/login/" in body


def test_an_unknown_address_is_a_page_not_found_with_a_way_on(owner: Any) -> None:
    body = _page(signed_in(owner).get("/no/such/page/"))
    assert "Page not found" in body and "Back to your conversations" in body
    signed_out = _page(Client().get("/no/such/page/"))
    assert 'href="/accounts/login/?next=%2Fno%2Fsuch%2Fpage%2F"' in signed_out


def test_an_expired_form_is_explained_and_changes_nothing(owner: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 403
    body = _page(response)
    assert "This form has expired" in body and "Reload the page" in body
    assert "_auth_user_id" not in client.session
    zh = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD},
                     HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "表单已过期" in _page(zh)


def test_a_malformed_request_is_a_400_page() -> None:
    response = Client().get("/accounts/login/", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert "This request could not be read" in _page(response)


def test_a_forbidden_page_suggests_asking_the_owner(owner: Any) -> None:
    request = RequestFactory().get("/somewhere/")
    request.user = owner
    request.session = {}  # type: ignore[assignment]
    response = error_pages.permission_denied(request, PermissionDenied())
    assert response.status_code == 403
    body = response.content.decode()
    assert "You do not have access to this page" in body
    assert "ask the owner or an administrator" in body


def test_the_500_page_needs_no_database_and_no_request_context(
        django_assert_num_queries: Any) -> None:
    request = RequestFactory().get("/c/anything/")  # no user, no session, no messages
    with django_assert_num_queries(0), translation.override("zh-hans"):
        response = error_pages.server_error(request)
    assert response.status_code == 500
    body = response.content.decode()
    assert 'class="topbar"' in body and "app.css" in body
    assert "出了点问题" in body
    assert "csrfmiddlewaretoken" not in body  # no form that could not be sent
    with django_assert_num_queries(0):
        english = error_pages.server_error(request).content.decode()
    assert "Something went wrong" in english


def test_json_clients_still_get_json(owner: Any, outsider: Any) -> None:
    conversation = _chat(owner)
    client = signed_in(outsider)
    hidden = client.get(f"/c/{conversation.pk}/", HTTP_ACCEPT="application/json")
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "not_found"
    api = Client().get("/v1/nowhere", HTTP_AUTHORIZATION="Bearer nothing")
    assert api["Content-Type"] == "application/json"
    assert "error" in api.json()
    strict = Client(enforce_csrf_checks=True)
    refused = strict.post(f"/c/{conversation.pk}/messages/", {"text": "hi"},
                          HTTP_ACCEPT="application/json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    request = RequestFactory().get("/v1/models", HTTP_ACCEPT="application/json")
    failed = error_pages.server_error(request)
    assert failed.status_code == 500
    assert json.loads(failed.content)["error"]["code"] == "internal"
