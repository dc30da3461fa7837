"""Provider keys at rest, in rotation, when unreadable, and in logs (threats T14, T15, T25)."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

from providers import crypto, services
from providers.emulators import EmulatorServer
from providers.models import Provider
from tests.providers.test_provider_admin import (
    CHANGELIST,
    change_url,
    emulator_secrets,
    fast_password_hashing,
    form_data,
    point_at_emulator,
    probe_site,
    probe_site_server,
    run_action,
)

__all__ = ["fast_password_hashing", "probe_site", "probe_site_server"]  # fixtures in use here

pytestmark = pytest.mark.django_db

OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()
SECRETS = {"cloudflare": {"account_id": "acct-0001", "api_token": "cf-plain-token-AAAA1111"},
           "dashscope": {"api_key": "sk-plain-dashscope-BBBB2222"},
           "qianfan": {"api_key": "plain-qianfan-ak-CCCC3333",
                       "secret_key": "plain-qianfan-sk-DDDD4444"}}
PLAIN_SECRETS = ["cf-plain-token-AAAA1111", "sk-plain-dashscope-BBBB2222",
                 "plain-qianfan-ak-CCCC3333", "plain-qianfan-sk-DDDD4444"]


def raw_column(kind: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT credentials_encrypted FROM providers_provider WHERE kind = %s",
                       [kind])
        return str(cursor.fetchone()[0])


def database_dump() -> str:
    """Every row of every table as text: what a stolen backup would hold."""
    parts: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT * FROM "{table}"')  # names come from the schema itself
            parts.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(parts)


def store_all(secrets: dict[str, dict[str, str]] = SECRETS) -> None:
    for provider in Provider.objects.all():
        provider.set_credentials(secrets[provider.kind])
        provider.save()


# --- at rest ----------------------------------------------------------------------------------
def test_saved_keys_are_not_in_the_database_in_plaintext(admin_client: Client) -> None:
    for kind in ("cloudflare", "dashscope", "qianfan"):
        provider = Provider.objects.get(kind=kind)
        entered = {f"cred_{name}": value for name, value in SECRETS[kind].items()}
        response = admin_client.post(change_url(kind), form_data(provider, **entered))
        assert response.status_code == 302
    for kind in ("cloudflare", "dashscope", "qianfan"):
        column = raw_column(kind)
        assert column.startswith("gAAAAA")  # a Fernet token
        assert Provider.objects.get(kind=kind).get_credentials() == SECRETS[kind]
    dump = database_dump()
    for secret in PLAIN_SECRETS:
        assert secret not in dump
    assert "acct-0001" not in dump  # the whole credentials object is encrypted


def test_the_encryption_key_is_not_stored_in_the_database(settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]
    store_all()
    assert NEW_KEY not in database_dump()


def test_two_key_multifernet_reads_rows_written_under_the_old_key(settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [OLD_KEY]
    store_all()
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY, OLD_KEY]
    for provider in Provider.objects.all():
        assert provider.get_credentials() == SECRETS[provider.kind]
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]
    for provider in Provider.objects.all():
        assert not provider.credentials_readable()


def test_new_writes_use_the_first_key(settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY, OLD_KEY]
    store_all()
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]
    for provider in Provider.objects.all():
        assert provider.get_credentials() == SECRETS[provider.kind]


def test_rotate_keys_re_encrypts_every_row_under_the_first_key(settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [OLD_KEY]
    store_all()
    before = {kind: raw_column(kind) for kind in SECRETS}
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY, OLD_KEY]
    call_command("rotate_keys", stdout=(out := _Buffer()))
    assert "re-encrypted 3 provider(s)" in out.text
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]  # the old key is gone now
    for kind, secrets in SECRETS.items():
        assert raw_column(kind) != before[kind]
        assert Provider.objects.get(kind=kind).get_credentials() == secrets


def test_rotate_keys_names_rows_no_key_can_read_and_still_rotates_the_rest(
        settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [OLD_KEY]
    store_all()
    Provider.objects.filter(kind="qianfan").update(credentials_encrypted="gAAAAABcorrupt")
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY, OLD_KEY]
    with pytest.raises(CommandError) as error:
        call_command("rotate_keys", stdout=_Buffer())
    assert "qianfan" in str(error.value)
    assert "gAAAAAB" not in str(error.value)
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]
    assert Provider.objects.get(kind="cloudflare").get_credentials() == SECRETS["cloudflare"]
    assert Provider.objects.get(kind="dashscope").get_credentials() == SECRETS["dashscope"]


class _Buffer:
    def __init__(self) -> None:
        self.text = ""

    def write(self, value: str) -> None:
        self.text += value

    def flush(self) -> None:
        return


# --- unreadable credentials -------------------------------------------------------------------
def make_unreadable(settings: Any) -> None:
    """DashScope (and Qianfan): written under a key no longer configured. Cloudflare: written
    under the current key, then one character of the ciphertext changed."""
    settings.FIELD_ENCRYPTION_KEYS = [OLD_KEY]
    store_all()
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]
    cloudflare = Provider.objects.get(kind="cloudflare")
    cloudflare.set_credentials(SECRETS["cloudflare"])
    token = cloudflare.credentials_encrypted
    flipped = token[:60] + ("B" if token[60] != "B" else "C") + token[61:]
    Provider.objects.filter(kind="cloudflare").update(credentials_encrypted=flipped)


@pytest.mark.parametrize("token", ["gAAAAABnot-a-token", "not base64 at all ✓", "gAAAAA"])
def test_decrypting_garbage_raises_credentials_unreadable(token: str) -> None:
    with pytest.raises(crypto.CredentialsUnreadable) as error:
        crypto.decrypt_json(token)
    assert token not in str(error.value)


def test_a_token_that_is_not_a_json_object_is_unreadable() -> None:
    with pytest.raises(crypto.CredentialsUnreadable):
        crypto.decrypt_json(crypto.fernet().encrypt(b"[1, 2]").decode())
    with pytest.raises(crypto.CredentialsUnreadable):
        crypto.decrypt_json(crypto.fernet().encrypt(b"not json").decode())


def test_admin_pages_answer_200_and_ask_to_re_enter_unreadable_keys(
        admin_client: Client, settings: Any) -> None:
    make_unreadable(settings)
    listing = admin_client.get(CHANGELIST)
    assert listing.status_code == 200
    pages = [listing.content.decode()]
    for kind in ("cloudflare", "dashscope"):
        response = admin_client.get(change_url(kind))
        assert response.status_code == 200
        html = response.content.decode()
        assert "cannot be decrypted with the current FIELD_ENCRYPTION_KEYS" in html
        assert "unreadable: re-enter" in html
        pages.append(html)
    for html in pages:
        for secret in PLAIN_SECRETS:
            assert secret not in html
        for kind in ("cloudflare", "dashscope"):
            assert raw_column(kind)[:24] not in html
        assert NEW_KEY not in html and OLD_KEY not in html


def test_test_connection_reports_a_config_error_for_unreadable_keys(
        admin_client: Client, settings: Any) -> None:
    make_unreadable(settings)
    html = run_action(admin_client, "cloudflare", "dashscope")
    for kind in ("cloudflare", "dashscope"):
        provider = Provider.objects.get(kind=kind)
        assert provider.last_status == Provider.Status.ERROR
        assert provider.last_error == f"config: {services.UNREADABLE_MESSAGE}"
    assert services.UNREADABLE_MESSAGE in html
    for secret in PLAIN_SECRETS:
        assert secret not in html


def test_re_entering_keys_in_the_admin_repairs_an_unreadable_provider(
        admin_client: Client, settings: Any) -> None:
    make_unreadable(settings)
    provider = Provider.objects.get(kind="dashscope")
    response = admin_client.post(change_url("dashscope"),
                                 form_data(provider, cred_api_key="sk-re-entered-5555"))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.get_credentials() == {"api_key": "sk-re-entered-5555"}
    html = admin_client.get(change_url("dashscope")).content.decode()
    assert "cannot be decrypted" not in html


def test_credential_fields_are_marked_sensitive_for_error_reports(admin_client: Client) -> None:
    provider = Provider.objects.get(kind="qianfan")
    response = admin_client.post(change_url("qianfan"), form_data(
        provider, cred_api_key="ak-in-post-6666", cred_secret_key="sk-in-post-7777"))
    cleaned = SafeExceptionReporterFilter().get_post_parameters(response.wsgi_request)
    assert cleaned["cred_api_key"] != "ak-in-post-6666"
    assert cleaned["cred_secret_key"] != "sk-in-post-7777"
    assert cleaned["name"] == provider.name


def test_error_reports_hide_the_environment_sync_s_secrets() -> None:
    environ = {"CLOUDFLARE_ACCOUNT_ID": "acct-0001", "CLOUDFLARE_API_TOKEN": "cf-report-9999",
               "CLOUDFLARE_BASE_URL": "https://evil.test/client/v4"}
    with pytest.raises(ValidationError) as error:
        services.sync_from_env(environ)
    # From the first frame in our code on (the test's own frame holds the literal).
    report = ExceptionReporter(None, error.type, error.value, error.tb.tb_next)
    frames = report.get_traceback_frames()
    assert any(frame["function"] == "_apply_env" for frame in frames)
    assert "cf-report-9999" not in report.get_traceback_text()
    assert "cf-report-9999" not in report.get_traceback_html()


# --- logs (T15) -------------------------------------------------------------------------------
def formatted(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [formatter.format(record) + repr(record.args) for record in caplog.records]


def test_no_key_reaches_a_log_record_or_the_last_error(
        caplog: pytest.LogCaptureFixture, emulator: EmulatorServer, probe_site: list[str],
        settings: Any) -> None:
    for name in ("", "httpx", "httpcore", "providers", "django"):
        caplog.set_level(logging.DEBUG, logger=name)
    creds = emulator.credentials
    environ = {
        "CLOUDFLARE_ACCOUNT_ID": creds.cloudflare_account_id,
        "CLOUDFLARE_API_TOKEN": creds.cloudflare_api_token,
        "CLOUDFLARE_BASE_URL": emulator.base_urls["cloudflare"],
        "DASHSCOPE_API_KEY": creds.dashscope_api_key,
        "DASHSCOPE_BASE_URL": emulator.base_urls["dashscope"],
        "QIANFAN_AK": creds.qianfan_ak, "QIANFAN_SK": creds.qianfan_sk,
        "QIANFAN_BASE_URL": emulator.base_urls["qianfan"],
    }
    assert services.sync_from_env(environ)
    seen_errors: list[str] = []
    for provider in Provider.objects.all():  # success
        result = services.test_connection(provider)
        assert result.ok, result.message
    wrong = {"cloudflare": {"account_id": creds.cloudflare_account_id,
                            "api_token": "cf-wrong-token-XYZ987"},
             "dashscope": {"api_key": "sk-wrong-dashscope-XYZ987"},
             "qianfan": {"api_key": "wrong-ak-XYZ987", "secret_key": "wrong-sk-XYZ987"}}
    point_at_emulator(emulator, **wrong)
    for provider in Provider.objects.all():  # refused keys
        result = services.test_connection(provider)
        assert result.kind == "auth", result.message
        seen_errors.append(provider.last_error)
    point_at_emulator(emulator)
    emulator.script("cloudflare", "500-before", times=None)
    emulator.script("dashscope", "auth-before", times=None)
    emulator.script("qianfan", "error-after", times=None)
    for provider in Provider.objects.all():  # right keys, failing vendor
        assert not services.test_connection(provider).ok
        seen_errors.append(provider.last_error)
    records = formatted(caplog)
    text = "\n".join([*records, caplog.text, *seen_errors])
    assert any("HTTP Request" in line for line in records)  # httpx was heard at all
    forbidden = [*emulator_secrets(emulator), *PLAIN_SECRETS,
                 *(v for values in wrong.values() for k, v in values.items() if k != "account_id")]
    for secret in forbidden:
        assert secret not in text, secret
    assert not re.search(r"(?i)access_token=(?!\[REDACTED\])", text)
    assert not re.search(r"(?i)bearer\s+(?!\[REDACTED\])\S", text)
    for record in caplog.records:
        if record.exc_info:
            rendered = logging.Formatter().formatException(record.exc_info)
            for secret in forbidden:
                assert secret not in rendered
