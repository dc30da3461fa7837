"""Provider accounts (credentials encrypted at rest) and the model catalogue."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q, QuerySet
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from chatsite.compiled import Compiled
from providers import crypto
from providers.base import ProviderConfig, ProviderError
from providers.catalogue import OFFICIAL_BASE_URLS
from providers.params import specs_for, validate_params
from providers.registry import is_official_base_url


class ProviderKind(models.TextChoices):
    CLOUDFLARE = "cloudflare", "Cloudflare Workers AI"
    DASHSCOPE = "dashscope", "Alibaba DashScope"
    QIANFAN = "qianfan", "Baidu Qianfan"


@dataclass(frozen=True)
class CredentialField:
    name: str
    label: str
    secret: bool = True
    env: str = ""


CREDENTIAL_FIELDS: dict[str, tuple[CredentialField, ...]] = {
    ProviderKind.CLOUDFLARE: (
        CredentialField("account_id", "Account ID", secret=False, env="CLOUDFLARE_ACCOUNT_ID"),
        CredentialField("api_token", "API token", env="CLOUDFLARE_API_TOKEN"),
    ),
    ProviderKind.DASHSCOPE: (CredentialField("api_key", "API key", env="DASHSCOPE_API_KEY"),),
    ProviderKind.QIANFAN: (
        CredentialField("api_key", "API key (AK)", env="QIANFAN_AK"),
        CredentialField("secret_key", "Secret key (SK)", env="QIANFAN_SK"),
    ),
}

# The official base URLs live in providers.registry (one source of truth for threat T10): the
# first entry of each kind is the default, and their hosts are the only remote hosts a key may
# travel to (plus the deployment's explicit PROVIDER_EXTRA_HOSTS, e.g. a DashScope workspace
# domain or a corporate proxy).
DEFAULT_BASE_URLS: dict[str, str] = {kind: urls[0] for kind, urls in OFFICIAL_BASE_URLS.items()}
BASE_URL_ENV: dict[str, str] = {
    ProviderKind.CLOUDFLARE: "CLOUDFLARE_BASE_URL",
    ProviderKind.DASHSCOPE: "DASHSCOPE_BASE_URL",
    ProviderKind.QIANFAN: "QIANFAN_BASE_URL",
}

OFFICIAL_HOSTS: dict[str, tuple[str, ...]] = {
    kind: tuple(dict.fromkeys(urlsplit(url).hostname or "" for url in urls))
    for kind, urls in OFFICIAL_BASE_URLS.items()
}
LOOPBACK_NAMES = {"localhost"}


def is_loopback_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _extra_hosts() -> set[str]:
    return {h.lower().rstrip(".") for h in settings.PROVIDER_EXTRA_HOSTS if h.strip()}


def host_allowed(kind: str, host: str) -> bool:
    """May this kind's key be sent to `host`? Official host, loopback (emulators) or extra."""
    host = host.lower().rstrip(".")
    return host in OFFICIAL_HOSTS.get(kind, ()) or is_loopback_host(host) or host in _extra_hosts()


def validate_base_url(kind: str, url: str) -> None:
    """Refuse any base URL that could carry this provider's key to a host not its own (T10).

    Official: https on the vendor's host. Loopback (the emulators): http or https. Extra hosts
    from PROVIDER_EXTRA_HOSTS: https only, since a key must never cross a network in clear.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValidationError(_("The base URL must be an absolute http(s) URL."))
    if (parts.username is not None or parts.password is not None or "@" in parts.netloc
            or parts.query or parts.fragment or "?" in url or "#" in url):
        raise ValidationError(_("The base URL may not carry credentials, a query or a fragment."))
    try:
        parts.port  # noqa: B018 - only to reject a malformed port
    except ValueError:
        raise ValidationError(_("The base URL has an invalid port.")) from None
    host = parts.hostname
    if not host_allowed(kind, host):
        raise ValidationError(
            _("%(host)s is not an allowed host for this provider. Allowed: %(allowed)s, "
              "loopback addresses, and PROVIDER_EXTRA_HOSTS."),
            params={"host": host, "allowed": ", ".join(OFFICIAL_HOSTS.get(kind, ()))},
        )
    if is_official_base_url(kind, url) or is_loopback_host(host):
        return
    if parts.scheme != "https":
        raise ValidationError(_("Use https for a remote provider."))


class ProviderStatus(models.TextChoices):
    UNTESTED = "untested", _("not tested")
    OK = "ok", _("ok")
    ERROR = "error", _("error")


class Provider(models.Model):
    """One account at one backend. There is one row per kind."""

    # Declared outside: inside this class body `models` is also the reverse relation's name.
    Status = ProviderStatus

    kind = models.CharField(_("kind"), max_length=20, choices=ProviderKind.choices, unique=True)
    name = models.CharField(_("name"), max_length=80)
    base_url = models.CharField(_("base URL"), max_length=300)
    credentials_encrypted = models.TextField(blank=True, default="", editable=False)
    options = models.JSONField(_("options"), default=dict, blank=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    managed_by_env = models.BooleanField(
        _("managed by the environment"), default=False, editable=False,
        help_text=_("Credentials come from environment variables and are reset at start."),
    )
    last_status = models.CharField(_("last status"), max_length=10, choices=Status.choices,
                                   default=Status.UNTESTED, editable=False)
    last_error = models.TextField(_("last error"), blank=True, default="", editable=False)
    last_latency_ms = models.PositiveIntegerField(_("last latency (ms)"), null=True, blank=True,
                                                  editable=False)
    last_checked_at = models.DateTimeField(_("last checked"), null=True, blank=True,
                                           editable=False)
    # Since when the provider fails (first failure after a success); None while it works.
    failing_since = models.DateTimeField(_("failing since"), null=True, blank=True,
                                         editable=False)
    last_error_kind = models.CharField(_("last error kind"), max_length=40, blank=True,
                                       default="", editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["kind"]
        verbose_name = _("provider")
        verbose_name_plural = _("providers")

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        try:
            validate_base_url(self.kind, self.base_url)
        except ValidationError as exc:
            raise ValidationError({"base_url": exc.messages}) from None

    # credentials ---------------------------------------------------------------------------
    def get_credentials(self) -> dict[str, str]:
        return crypto.decrypt_json(self.credentials_encrypted)

    @sensitive_variables("values", "cleaned")
    def set_credentials(self, values: dict[str, str]) -> None:
        cleaned = {k: v.strip() for k, v in values.items() if v and v.strip()}
        self.credentials_encrypted = crypto.encrypt_json(cleaned) if cleaned else ""

    def credentials_readable(self) -> bool:
        try:
            self.get_credentials()
        except crypto.CredentialsUnreadable:
            return False
        return True

    @sensitive_variables("values")
    def masked_credentials(self) -> dict[str, str]:
        try:
            values = self.get_credentials()
        except crypto.CredentialsUnreadable:
            return {f.name: str(_("unreadable: re-enter")) for f in self.credential_fields}
        return {
            f.name: (crypto.mask(values.get(f.name, "")) if f.secret else values.get(f.name, ""))
            for f in self.credential_fields
        }

    @property
    def credential_fields(self) -> tuple[CredentialField, ...]:
        return CREDENTIAL_FIELDS.get(self.kind, ())

    @property
    @sensitive_variables("values")
    def is_configured(self) -> bool:
        try:
            values = self.get_credentials()
        except crypto.CredentialsUnreadable:
            return False
        return all(values.get(f.name) for f in self.credential_fields)

    def client_config(self) -> ProviderConfig:
        """Everything a client needs; raises CredentialsUnreadable for undecryptable keys."""
        validate_base_url(self.kind, self.base_url)
        return ProviderConfig(
            kind=self.kind,
            base_url=self.base_url.rstrip("/"),
            credentials=self.get_credentials(),
            options=dict(self.options or {}),
            connect_timeout=settings.PROVIDER_CONNECT_TIMEOUT,
            read_timeout=settings.PROVIDER_READ_TIMEOUT,
        )

    @property
    def site_url_reachable_warning(self) -> str:
        """DashScope fetches images from SITE_URL: warn when it cannot reach it."""
        if self.kind != ProviderKind.DASHSCOPE or self.options.get("image_transport") == "data_uri":
            return ""
        host = urlsplit(settings.SITE_URL).hostname or ""
        private = is_loopback_host(host)
        if not private:
            try:
                private = ip_address(host).is_private
            except ValueError:
                private = host.endswith((".local", ".internal", ".lan"))
        if private:
            return str(_("SITE_URL (%(url)s) is a loopback or private address: the real "
                         "DashScope cannot fetch images from it. Requests are still sent "
                         "(a local emulator can fetch them).") % {"url": settings.SITE_URL})
        return ""


class ModelConfigQuerySet(QuerySet["ModelConfig"]):
    def usable(self) -> ModelConfigQuerySet:
        return self.filter(enabled=True, provider__enabled=True)

    def visible_to(self, user: AbstractBaseUser | AnonymousUser) -> ModelConfigQuerySet:
        """Models this user may pick: enabled, and open to all or to one of their groups."""
        if not user.is_authenticated or not user.is_active:
            return self.none()
        qs = self.usable().select_related("provider")
        if getattr(user, "is_superuser", False):
            return qs
        return qs.filter(Q(groups__isnull=True) | Q(groups__user=user)).distinct()


@functools.cache
def _visible_one(superuser: bool) -> Compiled[ModelConfig]:
    """`visible_to` narrowed to one model, compiled once (chatsite/compiled.py): every message
    asks it before it is stored."""
    user_model = get_user_model()

    def build(model: int, user: int = 0) -> QuerySet[Any, Any]:
        viewer = user_model(pk=user, is_active=True, is_superuser=superuser)
        return (ModelConfig.objects.visible_to(viewer).filter(pk=model)
                .values_list("pk", flat=True)[:1])

    pk = user_model._meta.pk
    assert pk is not None
    if superuser:  # a superuser sees every usable model: the user is not in the query
        return Compiled(build, model=ModelConfig._meta.get_field("id"))
    return Compiled(build, model=ModelConfig._meta.get_field("id"), user=pk)


def is_visible_to(user: AbstractBaseUser | AnonymousUser, model_pk: int) -> bool:
    """`ModelConfig.objects.visible_to(user).filter(pk=model_pk).exists()`, without building it."""
    if not user.is_authenticated or not user.is_active:
        return False
    return bool(_visible_one(bool(getattr(user, "is_superuser", False))).rows(
        user=user.pk, model=model_pk))


class ModelConfig(models.Model):
    """One entry of the catalogue: a vendor model with its limits, defaults and prices."""

    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models",
                                 verbose_name=_("provider"))
    slug = models.CharField(
        _("slug"), max_length=80, unique=True,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9._-]*$",
                                   _("Lower-case letters, digits, dots, dashes, underscores."))],
        help_text=_("Our stable id for this model (API and URLs)."))
    model_id = models.CharField(_("vendor model id"), max_length=120)
    display_name = models.CharField(_("display name"), max_length=120)
    vision = models.BooleanField(_("accepts images"), default=False)
    # The request must carry an image (DashScope's Llama): the conversation needs one stored
    # image; follow-up turns may be text only, and the latest image is the one sent.
    requires_image = models.BooleanField(_("needs an image in the conversation"), default=False)
    context_window = models.PositiveIntegerField(_("context window (tokens)"), default=8192)
    max_input_chars = models.PositiveIntegerField(_("max input characters"), null=True,
                                                  blank=True)
    max_images = models.PositiveSmallIntegerField(_("max images per message"), default=0)
    max_image_bytes = models.PositiveIntegerField(_("max image bytes"), default=10 * 1024 * 1024)
    max_image_pixels = models.PositiveIntegerField(_("max image pixels"), default=40_000_000)
    max_image_side = models.PositiveIntegerField(_("max image side (px)"), default=4096)
    default_params = models.JSONField(_("default parameters"), default=dict, blank=True)
    price_input_per_mtok = models.DecimalField(_("price per million input tokens"),
                                               max_digits=12, decimal_places=6,
                                               default=Decimal(0))
    price_output_per_mtok = models.DecimalField(_("price per million output tokens"),
                                                max_digits=12, decimal_places=6,
                                                default=Decimal(0))
    currency = models.CharField(_("currency"), max_length=3, default="USD")
    enabled = models.BooleanField(_("enabled"), default=True)
    groups = models.ManyToManyField(
        Group, blank=True, related_name="models", verbose_name=_("visible to groups"),
        help_text=_("Leave empty to make the model visible to every user."),
    )
    sort_order = models.PositiveSmallIntegerField(_("order"), default=0)
    # The vendor model accepts OpenAI-style `tools` and answers with tool calls (/v1 only).
    supports_tools = models.BooleanField(_("accepts tools"), default=False)
    # Writes conversation titles after the first answer. None chosen: the cheapest enabled
    # text model does it.
    for_titles = models.BooleanField(
        _("writes conversation titles"), default=False,
        help_text=_("The model that names new conversations. When none is chosen, the "
                    "cheapest enabled text model does."))

    objects = ModelConfigQuerySet.as_manager()

    class Meta:
        ordering = ["sort_order", "display_name"]
        verbose_name = _("model")
        verbose_name_plural = _("models")

    def __str__(self) -> str:
        return self.display_name

    def clean(self) -> None:
        if self.requires_image and not self.vision:
            raise ValidationError(_("A model that needs an image must accept images."))
        try:
            validate_params(self.model_id, self.default_params or {})
        except ProviderError as exc:
            raise ValidationError({"default_params": exc.message}) from None

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> Decimal:
        million = Decimal(1_000_000)
        return (Decimal(prompt_tokens or 0) * self.price_input_per_mtok
                + Decimal(completion_tokens or 0) * self.price_output_per_mtok) / million

    def param_specs(self) -> dict[str, Any]:
        return specs_for(self.model_id)


class ModelFallback(models.Model):
    """When `model`'s provider fails before the first token with a curable kind, the answer
    continues on `fallback` (ordered by position; text for text, vision only to vision)."""

    model = models.ForeignKey(ModelConfig, on_delete=models.CASCADE,
                              related_name="fallback_links", verbose_name=_("model"))
    fallback = models.ForeignKey(ModelConfig, on_delete=models.CASCADE, related_name="+",
                                 verbose_name=_("fallback model"))
    position = models.PositiveSmallIntegerField(_("order"), default=0)

    class Meta:
        ordering = ["model", "position", "pk"]
        constraints = [models.UniqueConstraint(fields=["model", "fallback"],
                                               name="model_fallback_unique")]
        verbose_name = _("fallback model")
        verbose_name_plural = _("fallback models")

    def __str__(self) -> str:
        return f"{self.model} -> {self.fallback}"
