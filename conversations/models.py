"""Conversations, messages (a tree: regenerations and edits are siblings), attachments."""

from __future__ import annotations

import secrets
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from providers.models import ModelConfig


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="conversations", verbose_name=_("owner"))
    team = models.ForeignKey(Group, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="conversations", verbose_name=_("team"))
    title = models.CharField(_("title"), max_length=200, blank=True)
    title_is_auto = models.BooleanField(default=True)
    model = models.ForeignKey(ModelConfig, on_delete=models.PROTECT, related_name="+",
                              verbose_name=_("model"))
    system_prompt = models.TextField(_("system prompt"), blank=True, max_length=20_000)
    params = models.JSONField(_("parameters"), default=dict, blank=True)
    pinned = models.BooleanField(_("pinned"), default=False)
    archived = models.BooleanField(_("archived"), default=False)
    imported = models.BooleanField(_("imported"), default=False)
    # The preset it was started from (its prompt and parameters were copied at the start:
    # later edits of the preset do not rewrite this conversation).
    preset = models.ForeignKey("Preset", on_delete=models.SET_NULL, null=True, blank=True,
                               related_name="conversations", verbose_name=_("preset"))
    # Kept whatever the retention policy says (an admin's legal hold).
    legal_hold = models.BooleanField(_("legal hold"), default=False)
    # The tip of the branch the user looks at; walking `parent` up from it gives the thread.
    active_leaf = models.ForeignKey("Message", on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="+")
    next_seq = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True, db_index=True)

    class Meta:
        ordering = ["-pinned", "-updated_at"]
        indexes = [models.Index(fields=["owner", "archived", "-pinned", "-updated_at"])]
        verbose_name = _("conversation")
        verbose_name_plural = _("conversations")

    def __str__(self) -> str:
        return self.title or str(_("New conversation"))

    @property
    def display_title(self) -> str:
        return self.title or str(_("New conversation"))


class MessageStatus(models.TextChoices):
    QUEUED = "queued", _("queued")
    STREAMING = "streaming", _("streaming")
    COMPLETE = "complete", _("complete")
    STOPPED = "stopped", _("stopped")
    FAILED = "failed", _("failed")
    INTERRUPTED = "interrupted", _("interrupted")


ACTIVE_STATUSES = (MessageStatus.QUEUED, MessageStatus.STREAMING)
FINAL_STATUSES = (MessageStatus.COMPLETE, MessageStatus.STOPPED, MessageStatus.FAILED,
                  MessageStatus.INTERRUPTED)


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", _("user")
        ASSISTANT = "assistant", _("assistant")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE,
                                     related_name="messages")
    parent = models.ForeignKey("self", on_delete=models.CASCADE, null=True, blank=True,
                               related_name="children")
    seq = models.PositiveIntegerField()  # order of creation within the conversation
    role = models.CharField(max_length=10, choices=Role.choices)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                               blank=True, related_name="+")
    # The browser's id for a user message: a repeated POST returns the existing pair (F10).
    client_id = models.UUIDField(null=True, blank=True)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=MessageStatus.choices,
                              default=MessageStatus.COMPLETE)
    error_code = models.CharField(max_length=40, blank=True)
    # Set when another model wrote this answer after the first one failed before its first
    # token: the model first asked, and the error kind that made it switch.
    fallback_from = models.ForeignKey(ModelConfig, on_delete=models.SET_NULL, null=True,
                                      blank=True, related_name="+")
    fallback_reason = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    finish_reason = models.CharField(max_length=40, blank=True)
    model = models.ForeignKey(ModelConfig, on_delete=models.PROTECT, null=True, blank=True,
                              related_name="+")
    stop_requested = models.BooleanField(default=False)
    runner = models.CharField(max_length=120, blank=True)  # which process is generating it
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    request_id = models.CharField(max_length=120, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # An earlier turn the vendor's moderation flagged (Qianfan's ban_round): left out of every
    # later request of this branch, so the conversation can go on.
    context_excluded = models.BooleanField(default=False)
    # Of an answer: how many earlier messages were not sent to the model (its context budget).
    context_dropped = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["seq"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="message_seq_unique"),
            models.UniqueConstraint(fields=["conversation", "client_id"],
                                    name="message_client_id_unique",
                                    condition=models.Q(client_id__isnull=False)),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.role} #{self.seq}"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def retryable(self) -> bool:
        return self.role == self.Role.ASSISTANT and self.status in (
            MessageStatus.FAILED, MessageStatus.STOPPED, MessageStatus.INTERRUPTED)


class UserPreferences(models.Model):
    """What a user chose once and expects remembered (the default model of a new chat)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="chat_preferences")
    default_model = models.ForeignKey(ModelConfig, on_delete=models.SET_NULL, null=True,
                                      blank=True, related_name="+",
                                      verbose_name=_("default model"))

    class Meta:
        verbose_name = _("preferences")
        verbose_name_plural = _("preferences")

    def __str__(self) -> str:
        return str(self.user)


class TeamSettings(models.Model):
    """Per-team switches; a team is a Django group."""

    team = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="chat_settings",
                                verbose_name=_("team"))
    members_can_continue = models.BooleanField(
        _("members may continue team conversations"), default=True)
    # A new chat of a member starts on this model unless they chose their own default.
    default_model = models.ForeignKey(ModelConfig, on_delete=models.SET_NULL, null=True,
                                      blank=True, related_name="+",
                                      verbose_name=_("default model"))
    # Managers manage this team's members, invitations and settings; each is also a member.
    managers = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True,
                                      related_name="managed_team_settings",
                                      verbose_name=_("managers"))
    # Retention: None follows the site's period; a number of days may only be shorter.
    retention_days = models.PositiveIntegerField(_("retention (days)"), null=True, blank=True)
    retention_keep = models.BooleanField(_("keep this team's conversations"), default=False)
    legal_hold = models.BooleanField(_("legal hold"), default=False)

    class Meta:
        verbose_name = _("team settings")
        verbose_name_plural = _("team settings")

    def __str__(self) -> str:
        return str(self.team)


def _upload_path(instance: Attachment, filename: str) -> str:
    return filename  # the name is generated by images.generated_name, never the user's


class Attachment(models.Model):
    """An uploaded image: validated, re-encoded and stripped before it is stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="attachments")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, null=True,
                                     blank=True, related_name="attachments")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, null=True, blank=True,
                                related_name="attachments")
    file = models.FileField(upload_to=_upload_path, max_length=200, blank=True)
    mime_type = models.CharField(max_length=20)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    display_name = models.CharField(max_length=160, blank=True)
    expired = models.BooleanField(default=False)  # the retention period removed the file
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.display_name or str(self.pk)


class UsageRecord(models.Model):
    """One answer's cost, whatever path produced it (web page or API): the accounting ledger.

    Created when the answer starts (so rate and concurrency limits see it), finished at the end.
    """

    class Source(models.TextChoices):
        WEB = "web", _("web")
        API = "api", _("API")

    class Purpose(models.TextChoices):
        ANSWER = "answer", _("answer")
        TITLE = "title", _("title")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                             related_name="usage_records", verbose_name=_("user"))
    team = models.ForeignKey(Group, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="usage_records", verbose_name=_("team"))
    model = models.ForeignKey(ModelConfig, on_delete=models.PROTECT, related_name="+",
                              verbose_name=_("model"))
    message = models.OneToOneField(Message, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="usage", verbose_name=_("message"))
    source = models.CharField(_("source"), max_length=8, choices=Source.choices,
                              default=Source.WEB)
    # A title call has no message of its own; it keeps its conversation instead.
    purpose = models.CharField(_("purpose"), max_length=8, choices=Purpose.choices,
                               default=Purpose.ANSWER)
    conversation = models.ForeignKey(Conversation, on_delete=models.SET_NULL, null=True,
                                     blank=True, related_name="+",
                                     verbose_name=_("conversation"))
    started_at = models.DateTimeField(_("started"), auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    status = models.CharField(_("status"), max_length=12, default="running")
    prompt_tokens = models.PositiveIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.PositiveIntegerField(_("completion tokens"), default=0)
    cost = models.DecimalField(_("cost"), max_digits=14, decimal_places=8, default=Decimal(0))
    currency = models.CharField(_("currency"), max_length=3, default="USD")
    request_id = models.CharField(_("request id"), max_length=120, blank=True)
    # Why it did not complete normally (an ErrorKind value, "internal", "interrupted"), or "".
    error_code = models.CharField(_("error code"), max_length=40, blank=True)
    ttft_ms = models.PositiveIntegerField(_("time to first token (ms)"), null=True, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["user", "started_at"]),
                   models.Index(fields=["team", "started_at"]),
                   models.Index(fields=["finished_at"])]
        verbose_name = _("usage record")
        verbose_name_plural = _("usage records")

    def __str__(self) -> str:
        return f"{self.user} {self.model} {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Budget(models.Model):
    """A spending limit for one user or one team, per day or per month."""

    class Period(models.TextChoices):
        DAY = "day", _("per day")
        MONTH = "month", _("per month")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True,
                             blank=True, related_name="budgets", verbose_name=_("user"))
    team = models.ForeignKey(Group, on_delete=models.CASCADE, null=True, blank=True,
                             related_name="budgets", verbose_name=_("team"))
    period = models.CharField(_("period"), max_length=8, choices=Period.choices,
                              default=Period.DAY)
    max_tokens = models.PositiveBigIntegerField(_("max tokens"), null=True, blank=True,
                                                help_text=_("Prompt plus completion tokens."))
    max_cost = models.DecimalField(_("max cost"), max_digits=12, decimal_places=4, null=True,
                                   blank=True, help_text=_("In the models' price currency."))
    warn_percent = models.PositiveSmallIntegerField(_("warn at (%)"), default=80,
                                                    help_text=_("Warn from this share on."))
    enabled = models.BooleanField(_("enabled"), default=True)

    class Meta:
        verbose_name = _("budget")
        verbose_name_plural = _("budgets")
        constraints = [models.CheckConstraint(
            condition=(models.Q(user__isnull=False, team__isnull=True)
                       | models.Q(user__isnull=True, team__isnull=False)),
            name="budget_user_xor_team")]

    def __str__(self) -> str:
        who = self.user or self.team
        return f"{who} {self.get_period_display()}"


class ApiToken(models.Model):
    """A personal token for the OpenAI-compatible API. Only its hash is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="api_tokens", verbose_name=_("user"))
    name = models.CharField(_("name"), max_length=80)
    prefix = models.CharField(max_length=16, db_index=True)  # shown to tell tokens apart
    digest = models.CharField(max_length=64, unique=True)  # sha256 of the whole token
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


def _share_token() -> str:
    return secrets.token_urlsafe(24)


class ShareLink(models.Model):
    """A read-only link to a conversation; revocable at once."""

    token = models.CharField(max_length=64, unique=True, default=_share_token, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE,
                                     related_name="share_links", verbose_name=_("conversation"))
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                   related_name="+", verbose_name=_("created by"))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)
    live = models.BooleanField(_("live"), default=False,
                               help_text=_("Show new messages too, not only those at sharing."))
    anonymous = models.BooleanField(_("anonymous"), default=False,
                                    help_text=_("Readable without signing in."))
    upto_seq = models.PositiveIntegerField(default=0)  # the last message at sharing time

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("share link")
        verbose_name_plural = _("share links")

    def __str__(self) -> str:
        return f"{self.conversation} ({self.token[:6]}…)"

    def is_valid(self, now: Any = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class AuditEvent(models.Model):
    """Who did what to security-relevant things. Never holds a secret."""

    at = models.DateTimeField(_("at"), auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                              blank=True, related_name="+", verbose_name=_("actor"))
    action = models.CharField(_("action"), max_length=40, db_index=True)
    target = models.CharField(_("target"), max_length=200, blank=True)
    details = models.JSONField(_("details"), default=dict, blank=True)
    ip = models.GenericIPAddressField(_("IP address"), null=True, blank=True)

    class Meta:
        ordering = ["-at"]
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.action} {self.target}"


class RetentionPolicy(models.Model):
    """The site-wide retention period (a single row, pk=1). No row or no days: keep forever."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    retention_days = models.PositiveIntegerField(_("retention (days)"), null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, blank=True, related_name="+")

    class Meta:
        verbose_name = _("retention policy")
        verbose_name_plural = _("retention policy")

    def __str__(self) -> str:
        return str(self.retention_days or _("keep forever"))


class Invitation(models.Model):
    """A one-time, expiring link that lets a person in (and into a team). Stored hashed."""

    class Role(models.TextChoices):
        MEMBER = "member", _("member")
        MANAGER = "manager", _("manager")

    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    email = models.EmailField(_("e-mail"), blank=True)
    team = models.ForeignKey(Group, on_delete=models.CASCADE, null=True, blank=True,
                             related_name="invitations", verbose_name=_("team"))
    role = models.CharField(_("role"), max_length=8, choices=Role.choices,
                            default=Role.MEMBER)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, related_name="+", verbose_name=_("created by"))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"))
    used_at = models.DateTimeField(_("used"), null=True, blank=True)
    used_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                null=True, blank=True, related_name="+",
                                verbose_name=_("used by"))
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("invitation")
        verbose_name_plural = _("invitations")

    def __str__(self) -> str:
        return f"{self.email or '-'} {self.team or ''}".strip()

    def is_valid(self, now: Any = None) -> bool:
        now = now or timezone.now()
        return self.used_at is None and self.revoked_at is None and self.expires_at > now


class Preset(models.Model):
    """A named starting point: a model, a system prompt, parameters and starter prompts.

    Personal (owner set), published to a team (team set) or site-wide (neither)."""

    class Scope(models.TextChoices):
        PERSONAL = "personal", _("personal")
        TEAM = "team", _("team")
        SITE = "site", _("site")

    slug = models.SlugField(_("slug"), max_length=80, unique=True)
    name = models.CharField(_("name"), max_length=80)
    icon = models.CharField(_("icon"), max_length=16, blank=True)
    scope = models.CharField(_("scope"), max_length=8, choices=Scope.choices,
                             default=Scope.PERSONAL)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True,
                              blank=True, related_name="presets", verbose_name=_("owner"))
    team = models.ForeignKey(Group, on_delete=models.CASCADE, null=True, blank=True,
                             related_name="presets", verbose_name=_("team"))
    model = models.ForeignKey(ModelConfig, on_delete=models.PROTECT, related_name="+",
                              verbose_name=_("model"))
    system_prompt = models.TextField(_("system prompt"), blank=True, max_length=20_000)
    params = models.JSONField(_("parameters"), default=dict, blank=True)
    starters = models.JSONField(_("starter prompts"), default=list, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL,
                                   null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        ordering = ["scope", "name"]
        verbose_name = _("preset")
        verbose_name_plural = _("presets")

    def __str__(self) -> str:
        return f"{self.icon} {self.name}".strip()


def _document_path(instance: Document, filename: str) -> str:
    return filename  # generated by the documents room, never the user's name


class Document(models.Model):
    """An uploaded text document (plain text, Markdown, CSV, source code, PDF, DOCX).

    Validated by content; its text is extracted once by a background job and kept here, cut
    into passages for full-text ranking. Follows its conversation's access, sharing, export
    and retention, as images do."""

    class Status(models.TextChoices):
        PENDING = "pending", _("extracting")
        READY = "ready", _("ready")
        FAILED = "failed", _("failed")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="documents")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, null=True,
                                     blank=True, related_name="documents")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, null=True, blank=True,
                                related_name="documents")
    file = models.FileField(upload_to=_document_path, max_length=200, blank=True)
    display_name = models.CharField(max_length=160, blank=True)
    mime_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    pages = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    error_code = models.CharField(max_length=40, blank=True)
    text = models.TextField(blank=True)
    chars = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at"]
        verbose_name = _("document")
        verbose_name_plural = _("documents")

    def __str__(self) -> str:
        return self.display_name or str(self.pk)


class DocumentPassage(models.Model):
    """A passage of a document's text (a page or a part of one), the unit of ranking."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="passages")
    seq = models.PositiveIntegerField()
    page = models.PositiveIntegerField(null=True, blank=True)
    text = models.TextField()

    class Meta:
        ordering = ["document", "seq"]
        constraints = [models.UniqueConstraint(fields=["document", "seq"],
                                               name="document_passage_seq")]

    def __str__(self) -> str:
        return f"{self.document_id} #{self.seq}"
