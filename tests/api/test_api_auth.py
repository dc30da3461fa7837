"""Who may use the API: a bearer token of an active user, and nothing else (T16)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from django.test import Client

from conversations.api import tokens
from conversations.models import ApiToken, UsageRecord
from tests.api.conftest import ApiServer, openai_client

pytestmark = pytest.mark.django_db(transaction=True)

SEEDED = {"llama-3.2-3b": "cloudflare", "llama-3.2-11b-vision": "cloudflare",
          "llama-3.2-90b-vision": "dashscope", "llama-3-70b": "qianfan"}
UNAUTHORIZED = {"type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
CHAT = {"model": "llama-3.2-3b", "messages": [{"role": "user", "content": "Hi"}]}


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert {k: error[k] for k in UNAUTHORIZED} == UNAUTHORIZED
    assert "Bearer" in error["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def both_endpoints(server: ApiServer, **kwargs: Any) -> list[httpx.Response]:
    return [httpx.get(f"{server.url}/v1/models", **kwargs),
            httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, **kwargs)]


def test_a_valid_token_lists_the_models_the_user_may_use(api_server: ApiServer, emulated: Any,
                                                         owner: Any, make_token: Any) -> None:
    client = openai_client(api_server, make_token(owner))
    listed = {m.id: m.owned_by for m in client.models.list()}
    assert listed == SEEDED
    assert client.models.retrieve("llama-3-70b").owned_by == "qianfan"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    raw = httpx.get(f"{api_server.url}/v1/models",
                    headers={"Authorization": f"Bearer {make_token(owner)}"})
    assert raw.json()["object"] == "list"
    assert all(isinstance(m["created"], int) and m["object"] == "model"
               for m in raw.json()["data"])
    assert raw.headers["Cache-Control"] == "no-store"


def test_using_a_token_records_when_it_was_last_used(api_server: ApiServer, emulated: Any,
                                                     owner: Any, make_token: Any) -> None:
    secret = make_token(owner)
    assert ApiToken.objects.get().last_used_at is None
    openai_client(api_server, secret).models.list()
    first = ApiToken.objects.get().last_used_at
    assert first is not None
    openai_client(api_server, secret).models.list()
    assert ApiToken.objects.get().last_used_at == first  # at most one write a minute


def test_requests_without_a_token_are_refused(api_server: ApiServer, emulated: Any,
                                              owner: Any) -> None:
    for response in both_endpoints(api_server):
        assert_refused(response)


@pytest.mark.parametrize("header", [
    "Bearer lc-not-a-real-token",
    "Bearer",
    "Basic YWxpY2U6Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==",
    "lc-{secret}",  # the token without its scheme
    "Token {secret}",
    "Bearer {secret}x",
    "Bearer {secret} {secret}",
])
def test_malformed_or_wrong_tokens_are_refused(api_server: ApiServer, emulated: Any,
                                               owner: Any, make_token: Any,
                                               header: str) -> None:
    secret = make_token(owner)
    for response in both_endpoints(api_server,
                                   headers={"Authorization": header.format(secret=secret)}):
        assert_refused(response)


def test_a_token_in_the_query_string_is_not_a_token(api_server: ApiServer, emulated: Any,
                                                    owner: Any, make_token: Any) -> None:
    secret = make_token(owner)
    for response in both_endpoints(api_server, params={"api_key": secret}):
        assert_refused(response)


def test_a_wrong_token_through_the_openai_package_is_an_authentication_error(
        api_server: ApiServer, emulated: Any, owner: Any) -> None:
    client = openai_client(api_server, "lc-" + "A" * 43)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="llama-3.2-3b",
                                       messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.code == "invalid_api_key"
    assert emulated.requests == [] and not UsageRecord.objects.exists()


def test_a_revoked_token_stops_working_at_once(api_server: ApiServer, emulated: Any,
                                               owner: Any) -> None:
    created = tokens.create_token(owner, "script")
    client = openai_client(api_server, created.secret)
    assert client.models.list().data
    tokens.revoke(created.token, actor=owner)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="llama-3.2-3b", stream=True,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert emulated.requests == []


def test_an_inactive_users_token_is_refused(api_server: ApiServer, emulated: Any, owner: Any,
                                            make_token: Any) -> None:
    client = openai_client(api_server, make_token(owner))
    owner.is_active = False
    owner.save()
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="llama-3.2-3b",
                                       messages=[{"role": "user", "content": "Hi"}])
    assert emulated.requests == [] and not UsageRecord.objects.exists()


def test_a_signed_in_browser_session_cannot_use_the_api(api_server: ApiServer, emulated: Any,
                                                       owner: Any) -> None:
    browser = Client()
    browser.force_login(owner)
    session = browser.cookies["sessionid"].value
    # The cookie works for the web page...
    page = httpx.get(f"{api_server.url}/", cookies={"sessionid": session})
    assert page.status_code == 200 and "alice" in page.text
    # ...and means nothing to the API, with or without a CSRF token.
    csrf = {"csrftoken": "a" * 32}
    for response in both_endpoints(api_server, cookies={"sessionid": session, **csrf},
                                   headers={"X-CSRFToken": "a" * 32}):
        assert_refused(response)
    assert emulated.requests == [] and not UsageRecord.objects.exists()


def test_unknown_api_paths_and_methods_answer_in_the_openai_shape(
        api_server: ApiServer, emulated: Any, owner: Any, make_token: Any) -> None:
    headers = {"Authorization": f"Bearer {make_token(owner)}"}
    missing = httpx.post(f"{api_server.url}/v1/embeddings", json={}, headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    wrong = httpx.get(f"{api_server.url}/v1/chat/completions", headers=headers)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_tokens_never_reach_the_server_log(api_server: ApiServer, emulated: Any, owner: Any,
                                           make_token: Any) -> None:
    good, wrong = make_token(owner), "lc-" + "B" * 43
    for secret in (good, wrong):
        both_endpoints(api_server, headers={"Authorization": f"Bearer {secret}"})
    log = api_server.log_text()
    assert good not in log and wrong not in log and good[10:] not in log
