"""Provider rows and the model catalogue: seed, base URL allow-list, visibility, validation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, Group
from django.core.exceptions import ValidationError

from providers import catalogue
from providers.catalogue import OFFICIAL_BASE_URLS
from providers.models import (
    DEFAULT_BASE_URLS,
    OFFICIAL_HOSTS,
    ModelConfig,
    Provider,
    host_allowed,
    validate_base_url,
)
from providers.registry import is_official_base_url
from tests.providers.test_provider_admin import fast_password_hashing

__all__ = ["fast_password_hashing"]  # an autouse fixture: personas without PBKDF2 cost

SEEDED_SLUGS = {"llama-3.2-3b", "llama-3.2-11b-vision", "llama-3.2-90b-vision", "llama-3-70b"}


# --- the seed ---------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_seed_migration_creates_three_providers_and_four_models() -> None:
    assert sorted(Provider.objects.values_list("kind", flat=True)) == [
        "cloudflare", "dashscope", "qianfan"]
    assert set(ModelConfig.objects.values_list("slug", flat=True)) == SEEDED_SLUGS
    for provider in Provider.objects.all():
        assert is_official_base_url(provider.kind, provider.base_url)
        assert provider.credentials_encrypted == ""
        assert not provider.is_configured
        assert not provider.managed_by_env
    vision = ModelConfig.objects.get(slug="llama-3.2-90b-vision")
    assert vision.provider.kind == "dashscope" and vision.requires_image and vision.vision


@pytest.mark.django_db
def test_seeding_again_keeps_what_the_admin_changed() -> None:
    model = ModelConfig.objects.get(slug="llama-3-70b")
    model.display_name = "Renamed by admin"
    model.save()
    Provider.objects.filter(kind="qianfan").update(name="Our Qianfan")
    catalogue.seed(Provider, ModelConfig)
    assert Provider.objects.count() == 3 and ModelConfig.objects.count() == 4
    assert ModelConfig.objects.get(slug="llama-3-70b").display_name == "Renamed by admin"
    assert Provider.objects.get(kind="qianfan").name == "Our Qianfan"


@pytest.mark.django_db
def test_every_seeded_model_passes_its_own_validation() -> None:
    for model in ModelConfig.objects.all():
        model.clean()


# --- one allow-list (T10) ---------------------------------------------------------------------
def test_the_host_allow_list_is_the_registry_s_official_base_urls() -> None:
    for kind, urls in OFFICIAL_BASE_URLS.items():
        assert DEFAULT_BASE_URLS[kind] == urls[0]
        assert set(OFFICIAL_HOSTS[kind]) == {url.split("/")[2] for url in urls}
        for url in urls:
            validate_base_url(kind, url)
    assert {spec["base_url"] for spec in catalogue.PROVIDERS} == set(DEFAULT_BASE_URLS.values())


@pytest.mark.parametrize(("kind", "url"), [
    ("cloudflare", "https://api.cloudflare.com/client/v4"),
    ("cloudflare", "https://API.CLOUDFLARE.COM/client/v4"),
    ("dashscope", "https://dashscope-intl.aliyuncs.com/api/v1"),
    ("qianfan", "https://aip.baidubce.com"),
    ("cloudflare", "http://127.0.0.1:9100/client/v4"),
    ("dashscope", "http://localhost:9100/api/v1"),
    ("qianfan", "http://[::1]:9100"),
    ("qianfan", "https://127.0.0.2"),
])
def test_official_and_loopback_base_urls_are_allowed(kind: str, url: str) -> None:
    validate_base_url(kind, url)


@pytest.mark.parametrize(("kind", "url", "reason"), [
    ("cloudflare", "https://evil.test/client/v4", "not an allowed host"),
    ("cloudflare", "https://api.cloudflare.com.evil.test/client/v4", "not an allowed host"),
    ("cloudflare", "https://evil-api.cloudflare.com/client/v4", "not an allowed host"),
    ("qianfan", "https://api.cloudflare.com/client/v4", "not an allowed host"),
    ("dashscope", "https://aip.baidubce.com", "not an allowed host"),
    ("cloudflare", "http://api.cloudflare.com/client/v4", "Use https"),
    ("qianfan", "http://10.0.0.5:8080", "not an allowed host"),
    ("cloudflare", "https://user@api.cloudflare.com/client/v4", "credentials"),
    ("cloudflare", "https://evil.test@api.cloudflare.com/client/v4", "credentials"),
    ("cloudflare", "https://u:p@127.0.0.1/client/v4", "credentials"),
    ("dashscope", "https://dashscope.aliyuncs.com/api/v1?key=x", "query"),
    ("dashscope", "https://dashscope.aliyuncs.com/api/v1?", "query"),
    ("dashscope", "https://dashscope.aliyuncs.com/api/v1#frag", "fragment"),
    ("qianfan", "https://aip.baidubce.com:notaport", "invalid port"),
    ("qianfan", "aip.baidubce.com", "absolute http(s) URL"),
    ("qianfan", "file:///etc/passwd", "absolute http(s) URL"),
    ("qianfan", "", "absolute http(s) URL"),
    ("nonsense", "https://aip.baidubce.com", "not an allowed host"),
])
def test_base_urls_that_could_leak_a_key_are_refused(kind: str, url: str, reason: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_base_url(kind, url)
    assert reason in " ".join(error.value.messages)


def test_extra_hosts_are_allowed_over_https_only(settings: Any) -> None:
    settings.PROVIDER_EXTRA_HOSTS = ["Proxy.Corp.Example"]
    assert host_allowed("dashscope", "proxy.corp.example")
    validate_base_url("dashscope", "https://proxy.corp.example/api/v1")
    with pytest.raises(ValidationError, match="https"):
        validate_base_url("dashscope", "http://proxy.corp.example/api/v1")
    settings.PROVIDER_EXTRA_HOSTS = []
    assert not host_allowed("dashscope", "proxy.corp.example")


@pytest.mark.django_db
def test_provider_clean_puts_the_url_error_on_the_base_url_field() -> None:
    provider = Provider.objects.get(kind="cloudflare")
    provider.base_url = "https://evil.test/client/v4"
    with pytest.raises(ValidationError) as error:
        provider.full_clean()
    assert "base_url" in error.value.message_dict


@pytest.mark.django_db
def test_client_config_refuses_a_url_that_is_no_longer_allowed(settings: Any) -> None:
    settings.PROVIDER_EXTRA_HOSTS = ["proxy.corp.example"]
    provider = Provider.objects.get(kind="dashscope")
    provider.base_url = "https://proxy.corp.example/api/v1"
    provider.set_credentials({"api_key": "sk-config-test-0001"})
    provider.save()
    assert provider.client_config().base_url == "https://proxy.corp.example/api/v1"
    settings.PROVIDER_EXTRA_HOSTS = []
    with pytest.raises(ValidationError):
        provider.client_config()


# --- credentials helpers ----------------------------------------------------------------------
@pytest.mark.django_db
def test_masked_credentials_show_the_last_four_characters_of_secrets_only() -> None:
    provider = Provider.objects.get(kind="cloudflare")
    provider.set_credentials({"account_id": "acct-visible-id", "api_token": "cf-token-abcd9876"})
    assert provider.masked_credentials() == {"account_id": "acct-visible-id",
                                             "api_token": "••••••••9876"}
    provider.set_credentials({"account_id": "acct", "api_token": "short"})
    assert provider.masked_credentials()["api_token"] == "••••"


@pytest.mark.django_db
def test_blank_credentials_are_dropped_and_configured_needs_every_field() -> None:
    provider = Provider.objects.get(kind="qianfan")
    provider.set_credentials({"api_key": "  ak-value-1  ", "secret_key": "   "})
    assert provider.get_credentials() == {"api_key": "ak-value-1"}
    assert not provider.is_configured
    provider.set_credentials({"api_key": "ak-value-1", "secret_key": "sk-value-1"})
    assert provider.is_configured
    provider.set_credentials({})
    assert provider.credentials_encrypted == ""


@pytest.mark.django_db
def test_repr_and_str_of_a_provider_hold_no_secret() -> None:
    provider = Provider.objects.get(kind="dashscope")
    provider.set_credentials({"api_key": "sk-repr-check-0001"})
    provider.save()
    assert "sk-repr-check-0001" not in f"{provider} {provider!r}"


# --- visibility -------------------------------------------------------------------------------
@pytest.fixture
def restricted(member: Any) -> Group:
    """The 90B vision model is restricted to a group `member` belongs to."""
    group = Group.objects.create(name="vision-testers")
    member.groups.add(group)
    ModelConfig.objects.get(slug="llama-3.2-90b-vision").groups.add(group)
    return group


def slugs(user: Any) -> set[str]:
    return set(ModelConfig.objects.visible_to(user).values_list("slug", flat=True))


@pytest.mark.django_db
def test_models_without_groups_are_visible_to_every_active_user(
        owner: Any, member: Any, restricted: Group) -> None:
    assert slugs(owner) == SEEDED_SLUGS - {"llama-3.2-90b-vision"}
    assert slugs(member) == SEEDED_SLUGS


@pytest.mark.django_db
def test_group_restricted_models_are_visible_to_members_and_superusers_only(
        owner: Any, member: Any, admin_user: Any, restricted: Group) -> None:
    assert "llama-3.2-90b-vision" in slugs(member)
    assert "llama-3.2-90b-vision" in slugs(admin_user)
    assert "llama-3.2-90b-vision" not in slugs(owner)
    owner.is_staff = True
    owner.save()
    assert "llama-3.2-90b-vision" not in slugs(owner)  # staff is not enough


@pytest.mark.django_db
def test_a_model_in_two_groups_is_listed_once(member: Any, restricted: Group) -> None:
    other = Group.objects.create(name="second")
    member.groups.add(other)
    ModelConfig.objects.get(slug="llama-3.2-90b-vision").groups.add(other)
    listed = list(ModelConfig.objects.visible_to(member).values_list("slug", flat=True))
    assert listed.count("llama-3.2-90b-vision") == 1


@pytest.mark.django_db
def test_disabled_models_and_models_of_disabled_providers_are_visible_to_nobody(
        member: Any, admin_user: Any, restricted: Group) -> None:
    ModelConfig.objects.filter(slug="llama-3-70b").update(enabled=False)
    Provider.objects.filter(kind="cloudflare").update(enabled=False)
    for user in (member, admin_user):
        assert slugs(user) == {"llama-3.2-90b-vision"}


@pytest.mark.django_db
def test_inactive_and_anonymous_users_see_no_model(owner: Any, admin_user: Any) -> None:
    assert slugs(AnonymousUser()) == set()
    owner.is_active = False
    owner.save()
    admin_user.is_active = False
    admin_user.save()
    assert slugs(owner) == set()
    assert slugs(admin_user) == set()


# --- validation and cost ----------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(("slug", "params", "words"), [
    ("llama-3.2-3b", {"temperature": 5.5}, "temperature"),
    ("llama-3.2-3b", {"max_tokens": 0}, "max_tokens"),
    ("llama-3.2-90b-vision", {"top_p": 0}, "top_p"),
    ("llama-3-70b", {"max_new_tokens": 100}, "not accepted"),
    ("llama-3-70b", {"max_tokens": 9000}, "max_tokens"),
    ("llama-3-70b", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_clean_refuses_default_params_out_of_range(slug: str, params: dict[str, Any],
                                                    words: str) -> None:
    model = ModelConfig.objects.get(slug=slug)
    model.default_params = params
    with pytest.raises(ValidationError) as error:
        model.clean()
    assert words in " ".join(error.value.message_dict["default_params"])


@pytest.mark.django_db
def test_clean_accepts_default_params_in_range() -> None:
    model = ModelConfig.objects.get(slug="llama-3-70b")
    model.default_params = {"temperature": 0.7, "penalty_score": 1.2, "stop": ["END"]}
    model.clean()


@pytest.mark.django_db
def test_clean_refuses_a_required_image_on_a_model_without_vision() -> None:
    model = ModelConfig.objects.get(slug="llama-3.2-3b")
    model.requires_image = True
    with pytest.raises(ValidationError, match="must accept images"):
        model.clean()


@pytest.mark.django_db
def test_cost_uses_the_prices_per_million_tokens() -> None:
    model = ModelConfig.objects.get(slug="llama-3.2-3b")
    assert model.cost(1_000_000, 2_000_000) == Decimal("0.051") + 2 * Decimal("0.335")
    assert model.cost(1000, 500) == Decimal("0.0002185")
    assert model.cost(None, None) == Decimal(0)
    model.price_input_per_mtok = Decimal("2")
    model.price_output_per_mtok = Decimal("6")
    assert model.cost(250_000, None) == Decimal("0.5")
    assert isinstance(model.cost(1, 1), Decimal)


@pytest.mark.django_db
def test_param_specs_follow_the_model_id() -> None:
    assert "max_tokens" in ModelConfig.objects.get(slug="llama-3.2-3b").param_specs()
    assert "penalty_score" in ModelConfig.objects.get(slug="llama-3-70b").param_specs()
    assert "penalty_score" not in ModelConfig.objects.get(slug="llama-3.2-3b").param_specs()
