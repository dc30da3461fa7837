"""Management commands: sync_providers (environment -> rows) and providers_check (probe table)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from providers import services
from providers.emulators import EmulatorServer
from providers.models import BASE_URL_ENV, CREDENTIAL_FIELDS, ModelConfig, Provider
from tests.providers.test_provider_admin import (
    emulator_secrets,
    point_at_emulator,
    probe_site,
    probe_site_server,
)

__all__ = ["probe_site", "probe_site_server"]  # fixtures used below

pytestmark = pytest.mark.django_db

ENV_NAMES = [*BASE_URL_ENV.values(),
             *(f.env for fields in CREDENTIAL_FIELDS.values() for f in fields)]
CLOUDFLARE_ENV = {"CLOUDFLARE_ACCOUNT_ID": "acct-from-env",
                  "CLOUDFLARE_API_TOKEN": "cf-env-token-0042",
                  "CLOUDFLARE_BASE_URL": "http://127.0.0.1:9100/client/v4/"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process environment without any provider variable, to set per test."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def sync() -> str:
    out = io.StringIO()
    call_command("sync_providers", stdout=out)
    return out.getvalue()


def snapshot() -> list[tuple[Any, ...]]:
    return list(Provider.objects.order_by("kind").values_list(
        "kind", "base_url", "credentials_encrypted", "managed_by_env", "updated_at"))


# --- sync_providers ---------------------------------------------------------------------------
def test_sync_sets_credentials_and_base_url_and_marks_the_provider_managed(
        env: pytest.MonkeyPatch) -> None:
    for name, value in CLOUDFLARE_ENV.items():
        env.setenv(name, value)
    output = sync()
    provider = Provider.objects.get(kind="cloudflare")
    assert provider.managed_by_env
    assert provider.base_url == "http://127.0.0.1:9100/client/v4"
    assert provider.get_credentials() == {"account_id": "acct-from-env",
                                          "api_token": "cf-env-token-0042"}
    assert "cloudflare: credentials from the environment" in output
    assert "cloudflare: base URL from CLOUDFLARE_BASE_URL" in output
    assert "cf-env-token-0042" not in output
    others = Provider.objects.exclude(kind="cloudflare")
    assert all(not p.managed_by_env and not p.credentials_encrypted for p in others)


def test_sync_handles_every_provider_kind(env: pytest.MonkeyPatch) -> None:
    env.setenv("DASHSCOPE_API_KEY", "sk-env-dashscope-0042")
    env.setenv("QIANFAN_AK", "env-ak-0042")
    env.setenv("QIANFAN_SK", "env-sk-0042")
    sync()
    assert Provider.objects.get(kind="dashscope").get_credentials() == {
        "api_key": "sk-env-dashscope-0042"}
    assert Provider.objects.get(kind="qianfan").get_credentials() == {
        "api_key": "env-ak-0042", "secret_key": "env-sk-0042"}
    assert Provider.objects.filter(managed_by_env=True).count() == 2


def test_running_sync_twice_changes_nothing(env: pytest.MonkeyPatch) -> None:
    for name, value in CLOUDFLARE_ENV.items():
        env.setenv(name, value)
    env.setenv("DASHSCOPE_API_KEY", "sk-env-dashscope-0042")
    sync()
    before = snapshot()
    assert sync().strip() == "providers: nothing to change"
    assert snapshot() == before  # same ciphertext, same updated_at: no row was written


def test_changed_env_values_replace_the_stored_ones(env: pytest.MonkeyPatch) -> None:
    for name, value in CLOUDFLARE_ENV.items():
        env.setenv(name, value)
    sync()
    env.setenv("CLOUDFLARE_API_TOKEN", "cf-env-token-rotated")
    assert "cloudflare: credentials from the environment" in sync()
    assert Provider.objects.get(kind="cloudflare").get_credentials()["api_token"] == (
        "cf-env-token-rotated")


def test_removing_the_env_vars_unmarks_managed_and_keeps_the_keys(
        env: pytest.MonkeyPatch) -> None:
    for name, value in CLOUDFLARE_ENV.items():
        env.setenv(name, value)
    sync()
    for name in CLOUDFLARE_ENV:
        env.delenv(name)
    assert "cloudflare: no longer managed by the environment" in sync()
    provider = Provider.objects.get(kind="cloudflare")
    assert not provider.managed_by_env
    assert provider.get_credentials()["api_token"] == "cf-env-token-0042"


def test_partial_env_does_not_touch_admin_entered_credentials(env: pytest.MonkeyPatch) -> None:
    provider = Provider.objects.get(kind="qianfan")
    provider.set_credentials({"api_key": "admin-ak-1111", "secret_key": "admin-sk-2222"})
    provider.save()
    env.setenv("QIANFAN_AK", "env-ak-only-3333")
    assert "qianfan" not in sync()
    provider.refresh_from_db()
    assert provider.get_credentials() == {"api_key": "admin-ak-1111",
                                          "secret_key": "admin-sk-2222"}
    assert not provider.managed_by_env


def test_partial_env_on_a_managed_provider_keeps_its_keys(env: pytest.MonkeyPatch) -> None:
    env.setenv("QIANFAN_AK", "env-ak-0042")
    env.setenv("QIANFAN_SK", "env-sk-0042")
    sync()
    env.delenv("QIANFAN_SK")
    sync()
    provider = Provider.objects.get(kind="qianfan")
    assert provider.get_credentials() == {"api_key": "env-ak-0042", "secret_key": "env-sk-0042"}
    assert not provider.managed_by_env


def test_sync_refuses_a_base_url_off_the_allow_list_and_applies_nothing(
        env: pytest.MonkeyPatch) -> None:
    env.setenv("DASHSCOPE_API_KEY", "sk-env-dashscope-0042")
    env.setenv("CLOUDFLARE_ACCOUNT_ID", "acct-from-env")
    env.setenv("CLOUDFLARE_API_TOKEN", "cf-env-token-0042")
    env.setenv("CLOUDFLARE_BASE_URL", "https://evil.test/client/v4")
    before = snapshot()
    with pytest.raises(CommandError) as error:
        sync()
    assert "CLOUDFLARE_BASE_URL" in str(error.value) and "evil.test" in str(error.value)
    assert "cf-env-token-0042" not in str(error.value)
    assert snapshot() == before


def test_sync_recreates_missing_catalogue_rows(env: pytest.MonkeyPatch) -> None:
    ModelConfig.objects.filter(slug="llama-3-70b").delete()
    sync()
    assert ModelConfig.objects.filter(slug="llama-3-70b").exists()


def test_sync_from_env_takes_any_mapping() -> None:
    changes = services.sync_from_env({"DASHSCOPE_API_KEY": "sk-mapping-0042"})
    assert changes == ["dashscope: credentials from the environment"]
    assert services.sync_from_env({"DASHSCOPE_API_KEY": "sk-mapping-0042"}) == []


# --- providers_check --------------------------------------------------------------------------
def check() -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("providers_check", stdout=out)
    except CommandError as error:
        return out.getvalue(), error
    return out.getvalue(), None


def rows(output: str) -> dict[str, list[str]]:
    # The model table ends at the first blank line; each provider's status follows.
    lines = output.split("\n\n")[0].splitlines()[2:]
    return {line.split()[0]: line.split() for line in lines if line.strip()}


def test_providers_check_prints_a_row_per_enabled_model_via_the_emulators(
        emulator: EmulatorServer, probe_site: list[str]) -> None:
    point_at_emulator(emulator)
    output, error = check()
    assert error is None, output
    header = output.splitlines()[0]
    for column in ("model", "result", "ttft", "total", "tokens"):
        assert column in header
    table = rows(output)
    assert set(table) == set(ModelConfig.objects.values_list("slug", flat=True))
    for cells in table.values():
        assert cells[1] == "ok", cells
        assert cells[2].isdigit() and cells[3].isdigit(), cells  # ttft and total in ms
        assert cells[4].isdigit() and int(cells[4]) > 0, cells  # completion tokens
    assert probe_site == ["/static/img/probe.png"]
    for secret in emulator_secrets(emulator):
        assert secret not in output


def test_providers_check_skips_disabled_models(
        emulator: EmulatorServer, probe_site: list[str]) -> None:
    point_at_emulator(emulator)
    ModelConfig.objects.filter(slug="llama-3.2-11b-vision").update(enabled=False)
    Provider.objects.filter(kind="qianfan").update(enabled=False)
    output, error = check()
    assert error is None, output
    assert set(rows(output)) == {"llama-3.2-3b", "llama-3.2-90b-vision"}


def test_providers_check_exits_non_zero_when_one_model_fails(
        emulator: EmulatorServer, probe_site: list[str]) -> None:
    point_at_emulator(emulator)
    emulator.script("qianfan", "auth-before", times=None)
    output, error = check()
    assert error is not None
    assert "1 of 4 failed" in str(error)
    table = rows(output)
    assert table["llama-3-70b"][1] == "auth"
    assert table["llama-3.2-3b"][1] == "ok"


def test_providers_check_reports_unconfigured_and_unreadable_providers(
        emulator: EmulatorServer, probe_site: list[str]) -> None:
    point_at_emulator(emulator)
    Provider.objects.filter(kind="qianfan").update(credentials_encrypted="")
    Provider.objects.filter(kind="dashscope").update(credentials_encrypted="gAAAAABbroken")
    output, error = check()
    assert error is not None and "2 of 4 failed" in str(error)
    table = rows(output)
    assert table["llama-3-70b"][1] == "config"
    assert "missing" in " ".join(table["llama-3-70b"])
    assert table["llama-3.2-90b-vision"][1] == "config"
    assert "decrypted" in " ".join(table["llama-3.2-90b-vision"])
    assert "gAAAAABbroken" not in output


def test_providers_check_with_no_enabled_model_says_so() -> None:
    ModelConfig.objects.update(enabled=False)
    output, error = check()
    assert error is None
    assert "no enabled model" in output


def test_providers_check_probe_asks_the_open_questions_and_prints_the_answers(
        emulator: EmulatorServer, probe_site: list[str]) -> None:
    point_at_emulator(emulator)
    out = io.StringIO()
    call_command("providers_check", "--probe", stdout=out)
    output = out.getvalue()
    lines = output.splitlines()[2:]
    assert len(lines) == 5, output
    by_question = {line[12:66].strip(): line for line in lines}
    # The emulators' default readings (their named switches hold the other ones).
    two_images = by_question["two images in one request"]
    assert " 400 " in two_images and "InvalidParameter" in two_images
    assert "InvalidParameter" in by_question["an image as a data: URI"]
    assert "accepted" in by_question["a `system` field"]
    assert "336003" in by_question["`max_output_tokens` (not documented for this model)"]
    assert by_question["`messages` with a top-level `image` (vision model)"].startswith(
        "cloudflare")
    for secret in emulator_secrets(emulator):
        assert secret not in output


def test_providers_check_probe_without_any_key_says_so(db: None) -> None:
    for provider in Provider.objects.all():
        provider.set_credentials({})
        provider.save()
    with pytest.raises(CommandError, match="no provider has credentials"):
        call_command("providers_check", "--probe", stdout=io.StringIO())
