"""The providers admin: write-only masked credentials, allowed base URLs, test connection.

Also home of the helpers the other Django-side provider tests import: `point_at_emulator` (the
seeded rows aimed at the session's emulator with its credentials) and the `probe_site` fixture
(a tiny local server playing SITE_URL, so the DashScope emulator can fetch the probe image).
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.test import Client

from providers.emulators import EmulatorServer
from providers.models import CREDENTIAL_FIELDS, Provider
from providers.services import PROBE_IMAGE
from tests.providers.conftest import FAST_OPTIONS

CHANGELIST = "/admin/providers/provider/"
MODEL_CHANGELIST = "/admin/providers/modelconfig/"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    """Personas are created per test; PBKDF2 would spend most of this file's time on them."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- helpers shared with the other test_provider_* files --------------------------------------
def emulator_credentials(server: EmulatorServer) -> dict[str, dict[str, str]]:
    creds = server.credentials
    return {
        "cloudflare": {"account_id": creds.cloudflare_account_id,
                       "api_token": creds.cloudflare_api_token},
        "dashscope": {"api_key": creds.dashscope_api_key},
        "qianfan": {"api_key": creds.qianfan_ak, "secret_key": creds.qianfan_sk},
    }


def emulator_secrets(server: EmulatorServer) -> list[str]:
    """Every secret the emulator accepts (the Cloudflare account id is not a secret)."""
    creds = server.credentials
    return [creds.cloudflare_api_token, creds.dashscope_api_key, creds.qianfan_ak,
            creds.qianfan_sk]


def point_at_emulator(server: EmulatorServer, **credentials: dict[str, str]) -> None:
    """Aim every seeded provider at `server` with its credentials (or the ones given per kind)."""
    cache.clear()  # Qianfan tokens cached by an earlier test died with the emulator reset
    values = emulator_credentials(server)
    for provider in Provider.objects.all():
        provider.base_url = server.base_urls[provider.kind]
        provider.set_credentials(credentials.get(provider.kind, values[provider.kind]))
        provider.options = {**provider.options, **FAST_OPTIONS}
        provider.save()


class _ProbeSite(http.server.BaseHTTPRequestHandler):
    """SITE_URL stand-in: serves the real static/img/probe.png and nothing else."""

    hits: list[str] = []

    def do_GET(self) -> None:
        if self.path != "/static/img/probe.png":
            self.send_error(404)
            return
        body = PROBE_IMAGE.read_bytes()
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return


@pytest.fixture(scope="session")
def probe_site_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProbeSite)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def probe_site(probe_site_server: str, settings: Any) -> list[str]:
    """SITE_URL points at the probe server; returns the list of paths it served."""
    settings.SITE_URL = probe_site_server
    _ProbeSite.hits.clear()
    return _ProbeSite.hits


def change_url(kind: str) -> str:
    return f"{CHANGELIST}{Provider.objects.get(kind=kind).pk}/change/"


def form_data(provider: Provider, **overrides: str) -> dict[str, str]:
    """What the browser posts for an untouched change form (secrets left empty)."""
    data = {"name": provider.name, "base_url": provider.base_url, "enabled": "on"}
    data.update({f"cred_{f.name}": "" for f in provider.credential_fields})
    if provider.kind == "dashscope":
        data["image_transport"] = provider.options.get("image_transport", "url")
    data.update(overrides)
    return data


def run_action(client: Client, *kinds: str) -> str:
    pks = [str(p.pk) for p in Provider.objects.filter(kind__in=kinds)]
    response = client.post(CHANGELIST, {"action": "test_connection", "_selected_action": pks,
                                        "index": "0"}, follow=True)
    assert response.status_code == 200
    return response.content.decode()


# --- the stored secret never leaves the server ------------------------------------------------
def test_change_page_shows_only_a_mask_of_the_stored_secret(
        admin_client: Client, emulator: EmulatorServer) -> None:
    point_at_emulator(emulator)
    for kind in ("cloudflare", "dashscope", "qianfan"):
        provider = Provider.objects.get(kind=kind)
        html = admin_client.get(change_url(kind)).content.decode()
        for secret in emulator_secrets(emulator):
            assert secret not in html
        assert provider.credentials_encrypted not in html
        assert provider.credentials_encrypted[:20] not in html
        for field in provider.credential_fields:
            if field.secret:
                last4 = provider.get_credentials()[field.name][-4:]
                assert f"••••••••{last4}" in html


def test_change_page_renders_secret_inputs_empty(
        admin_client: Client, emulator: EmulatorServer) -> None:
    point_at_emulator(emulator)
    html = admin_client.get(change_url("qianfan")).content.decode()
    inputs = re.findall(r'<input[^>]*name="cred_[^"]*"[^>]*>', html)
    assert len(inputs) == 2
    for tag in inputs:
        assert 'type="password"' in tag
        assert "value=" not in tag


def test_changelist_shows_no_key_material(admin_client: Client, emulator: EmulatorServer) -> None:
    point_at_emulator(emulator)
    html = admin_client.get(CHANGELIST).content.decode()
    for secret in emulator_secrets(emulator):
        assert secret not in html
    for provider in Provider.objects.all():
        assert provider.credentials_encrypted[:20] not in html


def test_empty_secret_fields_keep_the_stored_values(admin_client: Client) -> None:
    provider = Provider.objects.get(kind="qianfan")
    provider.set_credentials({"api_key": "stored-ak-1234", "secret_key": "stored-sk-5678"})
    provider.save()
    response = admin_client.post(change_url("qianfan"), form_data(provider, name="Qianfan 2"))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.name == "Qianfan 2"
    assert provider.get_credentials() == {"api_key": "stored-ak-1234",
                                          "secret_key": "stored-sk-5678"}


def test_a_new_secret_value_replaces_only_that_field(admin_client: Client) -> None:
    provider = Provider.objects.get(kind="qianfan")
    provider.set_credentials({"api_key": "stored-ak-1234", "secret_key": "stored-sk-5678"})
    provider.save()
    response = admin_client.post(change_url("qianfan"),
                                 form_data(provider, cred_secret_key="  fresh-sk-9999 "))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.get_credentials() == {"api_key": "stored-ak-1234",
                                          "secret_key": "fresh-sk-9999"}


def test_env_managed_provider_shows_credential_fields_disabled_and_ignores_posts(
        admin_client: Client) -> None:
    provider = Provider.objects.get(kind="dashscope")
    provider.set_credentials({"api_key": "sk-from-env-4321"})
    provider.managed_by_env = True
    provider.save()
    html = admin_client.get(change_url("dashscope")).content.decode()
    tag = re.search(r'<input[^>]*name="cred_api_key"[^>]*>', html)
    assert tag is not None and "disabled" in tag.group(0)
    response = admin_client.post(change_url("dashscope"),
                                 form_data(provider, cred_api_key="sk-typed-in-admin"))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.get_credentials() == {"api_key": "sk-from-env-4321"}


def test_the_admin_cannot_add_or_delete_providers(admin_client: Client) -> None:
    pk = Provider.objects.get(kind="cloudflare").pk
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.get(f"{CHANGELIST}{pk}/delete/").status_code == 403


# --- who may see the pages --------------------------------------------------------------------
def provider_admin_urls() -> list[str]:
    pk = Provider.objects.get(kind="cloudflare").pk
    model_pk = Provider.objects.get(kind="cloudflare").models.first().pk  # type: ignore[union-attr]
    return [CHANGELIST, f"{CHANGELIST}{pk}/change/", f"{CHANGELIST}{pk}/history/",
            MODEL_CHANGELIST, f"{MODEL_CHANGELIST}{model_pk}/change/", "/admin/providers/"]


def seed_secret() -> str:
    provider = Provider.objects.get(kind="cloudflare")
    provider.set_credentials({"account_id": "acc-visible", "api_token": "cf-secret-token-7777"})
    provider.save()
    return provider.credentials_encrypted


def test_non_staff_users_are_sent_to_login_and_see_no_key(client: Client, owner: Any) -> None:
    token = seed_secret()
    client.force_login(owner)
    for url in provider_admin_urls():
        response = client.get(url)
        assert response.status_code in {302, 403}, url
        if response.status_code == 302:
            assert "/admin/login/" in response["Location"]
        body = response.content.decode()
        assert "cf-secret-token-7777" not in body and token[:20] not in body
    pk = Provider.objects.get(kind="cloudflare").pk
    response = client.post(f"{CHANGELIST}{pk}/change/", {"base_url": "https://evil.test"})
    assert response.status_code in {302, 403}
    assert Provider.objects.get(kind="cloudflare").base_url.startswith("https://api.cloudflare")


def test_anonymous_users_are_sent_to_login(client: Client, owner: Any) -> None:
    seed_secret()
    for url in provider_admin_urls():
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url


def test_staff_without_provider_permissions_are_refused(client: Client, owner: Any) -> None:
    token = seed_secret()
    owner.is_staff = True
    owner.save()
    client.force_login(owner)
    for url in provider_admin_urls():
        response = client.get(url)
        assert response.status_code in {403, 404}, url
        body = response.content.decode()
        assert "cf-secret-token-7777" not in body and token[:20] not in body
    response = client.post(CHANGELIST, {"action": "test_connection", "index": "0",
                                        "_selected_action": [str(Provider.objects.first().pk)]})
    assert response.status_code == 403


def test_staff_with_view_permission_see_only_the_mask(client: Client, owner: Any) -> None:
    token = seed_secret()
    owner.is_staff = True
    owner.save()
    owner.user_permissions.add(Permission.objects.get(codename="view_provider"))
    client.force_login(owner)
    response = client.get(change_url("cloudflare"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "cf-secret-token-7777" not in body and token[:20] not in body
    assert "••••••••7777" in body


def test_change_form_post_without_csrf_token_is_refused(admin_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    provider = Provider.objects.get(kind="dashscope")
    response = client.post(change_url("dashscope"),
                           form_data(provider, cred_api_key="sk-csrf-attack-0000"))
    assert response.status_code == 403
    provider.refresh_from_db()
    assert provider.credentials_encrypted == ""
    response = client.post(CHANGELIST, {"action": "test_connection", "index": "0",
                                        "_selected_action": [str(provider.pk)]})
    assert response.status_code == 403


def test_change_form_post_with_csrf_token_is_accepted(admin_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    page = client.get(change_url("dashscope"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token is not None
    provider = Provider.objects.get(kind="dashscope")
    response = client.post(change_url("dashscope"), form_data(
        provider, cred_api_key="sk-with-token-1111", csrfmiddlewaretoken=token.group(1)))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.get_credentials() == {"api_key": "sk-with-token-1111"}


# --- keys only go to their own provider's host (T10) ------------------------------------------
@pytest.mark.parametrize(("kind", "url", "error"), [
    ("cloudflare", "https://evil.test/client/v4", "is not an allowed host"),
    ("cloudflare", "https://api.cloudflare.com.evil.test/client/v4", "is not an allowed host"),
    ("cloudflare", "https://dashscope.aliyuncs.com/api/v1", "is not an allowed host"),
    ("qianfan", "http://aip.baidubce.com", "Use https"),
    ("dashscope", "https://user:pw@dashscope.aliyuncs.com/api/v1", "may not carry credentials"),
    ("dashscope", "https://dashscope.aliyuncs.com/api/v1?x=1", "may not carry credentials"),
    ("qianfan", "ftp://aip.baidubce.com", "absolute http(s) URL"),
])
def test_admin_form_refuses_a_base_url_off_the_allow_list(
        admin_client: Client, kind: str, url: str, error: str) -> None:
    provider = Provider.objects.get(kind=kind)
    before = provider.base_url
    response = admin_client.post(change_url(kind), form_data(provider, base_url=url))
    assert response.status_code == 200
    html = response.content.decode()
    assert error in html
    assert 'class="errorlist' in html
    provider.refresh_from_db()
    assert provider.base_url == before


def test_admin_form_accepts_a_loopback_emulator_url(admin_client: Client) -> None:
    provider = Provider.objects.get(kind="cloudflare")
    response = admin_client.post(change_url("cloudflare"), form_data(
        provider, base_url="http://127.0.0.1:9100/client/v4"))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.base_url == "http://127.0.0.1:9100/client/v4"


# --- test connection --------------------------------------------------------------------------
def test_test_connection_records_ok_latency_and_time_for_every_provider(
        admin_client: Client, emulator: EmulatorServer, probe_site: list[str]) -> None:
    point_at_emulator(emulator)
    html = run_action(admin_client, "cloudflare", "dashscope", "qianfan")
    for provider in Provider.objects.all():
        assert provider.last_status == Provider.Status.OK, provider.last_error
        assert provider.last_error == ""
        assert provider.last_latency_ms is not None and provider.last_latency_ms >= 0
        assert provider.last_checked_at is not None
        assert f"{provider.name}: ok in" in html
    assert probe_site == ["/static/img/probe.png"]  # DashScope fetched the image from SITE_URL
    assert emulator.calls("cloudflare") == 1
    assert emulator.calls("qianfan") == 1


def test_test_connection_with_a_wrong_key_records_an_auth_error_without_the_key(
        admin_client: Client, emulator: EmulatorServer) -> None:
    wrong = "cf-wrong-token-123456789"
    point_at_emulator(emulator, cloudflare={
        "account_id": emulator.credentials.cloudflare_account_id, "api_token": wrong})
    html = run_action(admin_client, "cloudflare")
    provider = Provider.objects.get(kind="cloudflare")
    assert provider.last_status == Provider.Status.ERROR
    assert provider.last_error.startswith("auth: ")
    assert provider.last_checked_at is not None
    assert wrong not in provider.last_error and wrong not in html
    assert "auth" in html


def test_test_connection_without_credentials_reports_them_missing(admin_client: Client) -> None:
    html = run_action(admin_client, "qianfan")
    provider = Provider.objects.get(kind="qianfan")
    assert provider.last_status == Provider.Status.ERROR
    assert provider.last_error == "config: Credentials are missing."
    assert "Credentials are missing." in html


def test_dashscope_page_warns_that_a_loopback_site_url_cannot_be_fetched(
        admin_client: Client, emulator: EmulatorServer, probe_site: list[str]) -> None:
    point_at_emulator(emulator)
    warning = "is a loopback or private address"
    assert warning in admin_client.get(change_url("dashscope")).content.decode()
    assert warning not in admin_client.get(change_url("cloudflare")).content.decode()
    assert warning in run_action(admin_client, "dashscope")


def test_dashscope_page_has_no_warning_for_a_public_site_url(
        admin_client: Client, settings: Any) -> None:
    settings.SITE_URL = "https://chat.example.com"
    html = admin_client.get(change_url("dashscope")).content.decode()
    assert "loopback or private address" not in html


def test_image_transport_option_is_saved_for_dashscope(admin_client: Client) -> None:
    provider = Provider.objects.get(kind="dashscope")
    response = admin_client.post(change_url("dashscope"),
                                 form_data(provider, image_transport="data_uri"))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.options["image_transport"] == "data_uri"


# --- the model catalogue admin ----------------------------------------------------------------
def test_model_admin_refuses_default_params_out_of_range(admin_client: Client) -> None:
    provider = Provider.objects.get(kind="cloudflare")
    model = provider.models.get(slug="llama-3.2-3b")
    url = f"{MODEL_CHANGELIST}{model.pk}/change/"
    data = {
        "display_name": model.display_name, "enabled": "on",
        "sort_order": str(model.sort_order), "context_window": str(model.context_window),
        "max_input_chars": str(model.max_input_chars), "max_images": "0",
        "max_image_bytes": str(model.max_image_bytes),
        "max_image_pixels": str(model.max_image_pixels),
        "max_image_side": str(model.max_image_side),
        "default_params": '{"temperature": 9}', "price_input_per_mtok": "0.051",
        "price_output_per_mtok": "0.335", "currency": "USD",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert "temperature" in response.content.decode()
    model.refresh_from_db()
    assert model.default_params == {"max_tokens": 1024}
    response = admin_client.post(url, {**data, "default_params": '{"temperature": 0.5}'})
    assert response.status_code == 302
    model.refresh_from_db()
    assert model.default_params == {"temperature": 0.5}


def test_every_credential_field_appears_in_the_change_form(admin_client: Client) -> None:
    for kind, fields in CREDENTIAL_FIELDS.items():
        html = admin_client.get(change_url(kind)).content.decode()
        for field in fields:
            assert f'name="cred_{field.name}"' in html
