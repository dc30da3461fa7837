"""THE audit trail: who did what to security-relevant things. It never holds a secret.

`record()` writes one AuditEvent; the receivers below record sign-ins, role and membership
changes, provider and model changes, and share links, whatever code path made the change.

Who did it: signal receivers do not see the request, so the actor comes from, in order, the
`actor`/`request` arguments, the `acting(request)` block the caller runs in (our admin pages
wrap their views in one), or, for changes saved by another admin page, the admin's own LogEntry
written right after the save in the same request (`_attribute_admin_change`).
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from axes.signals import user_locked_out
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth import signals as auth_signals
from django.core.signals import request_started
from django.db import models
from django.db.models.signals import m2m_changed, post_save, pre_save
from django.http import HttpRequest

from conversations.models import AuditEvent, ShareLink
from providers.models import ModelConfig, Provider

# --- actions ----------------------------------------------------------------------------------
LOGIN_SUCCEEDED = "login.succeeded"
LOGIN_FAILED = "login.failed"
LOGIN_LOCKED_OUT = "login.locked_out"
LOGOUT = "logout"
USER_CREATED = "user.created"
USER_ROLE_CHANGED = "user.role_changed"
TEAM_MEMBER_ADDED = "team.member_added"
TEAM_MEMBER_REMOVED = "team.member_removed"
PROVIDER_CREDENTIALS_CHANGED = "provider.credentials_changed"
PROVIDER_CHANGED = "provider.changed"
MODEL_CHANGED = "model.changed"
SHARE_CREATED = "share.created"
SHARE_REVOKED = "share.revoked"
TOKEN_REVOKED = "token.revoked"
ADMIN_OPENED_CONVERSATION = "admin.opened_conversation"  # the name conversations.web.views uses

ROLE_FIELDS = ("is_active", "is_staff", "is_superuser")
# Provider columns that a connection test rewrites: operations, not configuration.
PROVIDER_STATUS_FIELDS = frozenset({"updated_at", "last_status", "last_error", "last_latency_ms",
                                    "last_checked_at"})
# A details key that looks like any of these is dropped, whatever its value.
_SECRET_KEY_NAME = re.compile(r"key|token|secret|passw|credential|cipher|digest|authoriz",
                              re.IGNORECASE)
# An admin LogEntry this much younger than the change it names still claims it.
_ATTRIBUTION_WINDOW = timedelta(seconds=60)

# Short names used in `target` ("user 12"); the chat views already write "conversation <id>".
_TARGET_NAMES = {
    ("auth", "user"): "user",
    ("auth", "group"): "team",
    ("providers", "provider"): "provider",
    ("providers", "modelconfig"): "model",
    ("conversations", "conversation"): "conversation",
    ("conversations", "sharelink"): "share",
    ("conversations", "apitoken"): "token",
}


def target_of(obj: models.Model) -> str:
    meta = obj._meta
    name = _TARGET_NAMES.get((meta.app_label, meta.model_name or ""), meta.label_lower)
    return f"{name} {obj.pk}"


def scrub(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of `details` without any key named like a secret, at any depth."""
    return _scrub(dict(details or {}))


def _scrub(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _scrub(v) for k, v in value.items()
                if not _SECRET_KEY_NAME.search(str(k))}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def client_ip(request: HttpRequest | None) -> str | None:
    if request is None:
        return None
    raw = getattr(request, "axes_ip_address", None) or request.META.get("REMOTE_ADDR", "")
    try:
        return str(ipaddress.ip_address(str(raw).strip()))
    except ValueError:
        return None


# --- who is acting ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Acting:
    actor_id: int | None
    ip: str | None


_acting: contextvars.ContextVar[_Acting | None] = contextvars.ContextVar("audit_acting",
                                                                        default=None)
# Events recorded without an actor, by target, waiting for an admin LogEntry to name one.
_unattributed: contextvars.ContextVar[dict[str, list[int]] | None] = contextvars.ContextVar(
    "audit_unattributed", default=None)


def _user_id(user: Any) -> int | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return getattr(user, "pk", None)


@contextmanager
def acting(request: HttpRequest | None = None, *, actor: Any = None) -> Iterator[None]:
    """Changes saved inside this block are recorded as made by this request's user."""
    who = _Acting(_user_id(actor) or _user_id(getattr(request, "user", None)), client_ip(request))
    token = _acting.set(who)
    try:
        yield
    finally:
        _acting.reset(token)


def record(action: str, *, actor: Any = None, target: str = "",
           details: Mapping[str, Any] | None = None,
           request: HttpRequest | None = None) -> AuditEvent:
    """Write one audit event. `details` loses every key named like a secret before storing."""
    context = _acting.get()
    actor_id = _user_id(actor) or _user_id(getattr(request, "user", None))
    if actor_id is None and context is not None:
        actor_id = context.actor_id
    ip = client_ip(request) or (context.ip if context else None)
    return AuditEvent.objects.create(action=action[:40], actor_id=actor_id, target=target[:200],
                                     details=scrub(details), ip=ip)


def _record_change(action: str, instance: models.Model, details: Mapping[str, Any]) -> None:
    target = target_of(instance)
    event = record(action, target=target, details=details)
    if event.actor_id is None:
        pending = _unattributed.get()
        if pending is None:
            pending = {}
            _unattributed.set(pending)
        if len(pending) > 500:  # a long script outside any request: keep memory flat
            pending.clear()
        pending.setdefault(target, []).append(event.pk)


# --- sign-in ----------------------------------------------------------------------------------
def _logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    record(LOGIN_SUCCEEDED, actor=user, target=target_of(user), request=request)


def _login_failed(sender: Any, credentials: Mapping[str, Any],
                  request: HttpRequest | None = None, **kwargs: Any) -> None:
    # Only the name that was tried: Django already masked the password, and it is not read here.
    username = str(credentials.get("username") or "")[:150]
    record(LOGIN_FAILED, details={"username": username}, request=request)


def _logged_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if user is not None:
        record(LOGOUT, actor=user, target=target_of(user), request=request)


def _locked_out(sender: Any, request: HttpRequest | None = None, username: str | None = None,
                **kwargs: Any) -> None:
    record(LOGIN_LOCKED_OUT, details={"username": str(username or "")[:150]}, request=request)


# --- roles and membership ---------------------------------------------------------------------
def _user_before(sender: Any, instance: Any, raw: bool = False,
                 update_fields: Any = None, **kwargs: Any) -> None:
    instance._audit_roles_before = None
    if raw or instance.pk is None:
        return
    if update_fields is not None and not set(update_fields) & set(ROLE_FIELDS):
        return  # e.g. the last_login update at every sign-in
    instance._audit_roles_before = (sender.objects.filter(pk=instance.pk)
                                    .values(*ROLE_FIELDS).first())


def _user_after(sender: Any, instance: Any, created: bool, raw: bool = False,
                **kwargs: Any) -> None:
    before = instance.__dict__.pop("_audit_roles_before", None)
    if raw:
        return
    roles = {field: bool(getattr(instance, field)) for field in ROLE_FIELDS}
    if created:
        _record_change(USER_CREATED, instance,
                       {"username": instance.get_username(), **roles})
        return
    if before is None:
        return
    changes = {field: [bool(before[field]), roles[field]] for field in ROLE_FIELDS
               if bool(before[field]) != roles[field]}
    if changes:
        _record_change(USER_ROLE_CHANGED, instance,
                       {"username": instance.get_username(), "changes": changes})


def _membership_changed(sender: Any, instance: Any, action: str, reverse: bool, model: Any,
                        pk_set: set[Any] | None, **kwargs: Any) -> None:
    """User.groups changed, from either side: one event per (user, team) pair."""
    if action == "pre_clear":
        # The rows are gone by post_clear: note who was linked now.
        related = instance.user_set if reverse else instance.groups
        instance._audit_cleared = set(related.values_list("pk", flat=True))
        return
    if action not in {"post_add", "post_remove", "post_clear"}:
        return
    if action == "post_clear":
        pk_set = instance.__dict__.pop("_audit_cleared", set())
    if not pk_set:
        return
    verb = TEAM_MEMBER_ADDED if action == "post_add" else TEAM_MEMBER_REMOVED
    others = list(model.objects.filter(pk__in=pk_set))
    for other in others:
        user, team = (other, instance) if reverse else (instance, other)
        _record_change(verb, user, {"username": user.get_username(), "team": team.name,
                                    "team_id": team.pk})


# --- providers and models ---------------------------------------------------------------------
def _concrete_values(instance: models.Model) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def _remember_row(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    instance._audit_row_before = None
    if raw or instance.pk is None:
        return
    instance._audit_row_before = (sender.objects.filter(pk=instance.pk)
                                  .values(*[f.attname for f in sender._meta.concrete_fields])
                                  .first())


def _changed_fields(instance: Any, ignore: frozenset[str] = frozenset()) -> list[str] | None:
    """Names of the columns whose saved value differs from the row before; None if new."""
    before = instance.__dict__.pop("_audit_row_before", None)
    if before is None:
        return None
    now = _concrete_values(instance)
    return sorted(name for name, value in now.items()
                  if name not in ignore and before.get(name) != value)


def _provider_saved(sender: Any, instance: Any, created: bool, raw: bool = False,
                    **kwargs: Any) -> None:
    changed = _changed_fields(instance, PROVIDER_STATUS_FIELDS)
    if raw or created or not changed:
        return
    if "credentials_encrypted" in changed:
        # The kind only: never the key, its mask or its ciphertext.
        _record_change(PROVIDER_CREDENTIALS_CHANGED, instance,
                       {"kind": instance.kind, "cleared": not instance.credentials_encrypted})
    others = [name for name in changed if name != "credentials_encrypted"]
    if others:
        _record_change(PROVIDER_CHANGED, instance, {"kind": instance.kind, "fields": others})


def _model_saved(sender: Any, instance: Any, created: bool, raw: bool = False,
                 **kwargs: Any) -> None:
    changed = _changed_fields(instance)
    if raw or created or not changed:
        return
    _record_change(MODEL_CHANGED, instance, {"slug": instance.slug, "fields": changed})


def _model_groups_changed(sender: Any, instance: Any, action: str, reverse: bool,
                          model: Any, pk_set: set[Any] | None, **kwargs: Any) -> None:
    """Who may pick a model changed (ModelConfig.groups, from either side)."""
    if action == "pre_clear":
        related = instance.models if reverse else instance.groups
        instance._audit_model_groups_cleared = set(related.values_list("pk", flat=True))
        return
    if action not in {"post_add", "post_remove", "post_clear"}:
        return
    if action == "post_clear":
        pk_set = instance.__dict__.pop("_audit_model_groups_cleared", set())
    if not pk_set:
        return
    models_changed = list(model.objects.filter(pk__in=pk_set)) if reverse else [instance]
    teams = [instance] if reverse else list(model.objects.filter(pk__in=pk_set))
    verb = "added" if action == "post_add" else "removed"
    for config in models_changed:
        _record_change(MODEL_CHANGED, config, {
            "slug": config.slug, "fields": ["groups"],
            f"groups_{verb}": sorted(team.name for team in teams)})


# --- share links ------------------------------------------------------------------------------
def _share_before(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    instance._audit_revoked_before = None
    if not raw and instance.pk is not None:
        instance._audit_revoked_before = (ShareLink.objects.filter(pk=instance.pk)
                                          .values_list("revoked_at", flat=True).first())


def share_details(share: ShareLink) -> dict[str, Any]:
    """What an audit event says about a link: never its token."""
    return {"conversation": str(share.conversation_id), "live": share.live,
            "anonymous": share.anonymous,
            "expires_at": share.expires_at.isoformat() if share.expires_at else None}


def _share_saved(sender: Any, instance: ShareLink, created: bool, raw: bool = False,
                 **kwargs: Any) -> None:
    before = instance.__dict__.pop("_audit_revoked_before", None)
    if raw:
        return
    if created:
        record(SHARE_CREATED, actor=instance.created_by, target=target_of(instance),
               details=share_details(instance))
    elif before is None and instance.revoked_at is not None:
        _record_change(SHARE_REVOKED, instance, share_details(instance))


def record_share_revoked(share: ShareLink, *, actor: Any = None,
                         request: HttpRequest | None = None) -> AuditEvent:
    """For code that revokes with a queryset update(), which sends no post_save."""
    return record(SHARE_REVOKED, actor=actor, request=request, target=target_of(share),
                  details=share_details(share))


# --- the admin's own log names the actor of changes saved by other admin pages ----------------
def _new_request(sender: Any, **kwargs: Any) -> None:
    _unattributed.set({})


def _attribute_admin_change(sender: Any, instance: Any, created: bool, raw: bool = False,
                            **kwargs: Any) -> None:
    pending = _unattributed.get()
    if raw or not created or not pending or instance.user_id is None:
        return
    model = instance.content_type.model_class() if instance.content_type_id else None
    if model is None:
        return
    meta = model._meta
    name = _TARGET_NAMES.get((meta.app_label, meta.model_name or ""), meta.label_lower)
    ids = pending.pop(f"{name} {instance.object_id}", [])
    if ids:
        AuditEvent.objects.filter(
            pk__in=ids, actor__isnull=True,
            at__gte=instance.action_time - _ATTRIBUTION_WINDOW,
        ).update(actor_id=instance.user_id)


# --- wiring -----------------------------------------------------------------------------------
def connect() -> None:
    """Connect every receiver (called once from ConversationsConfig.ready)."""
    user_model = get_user_model()
    auth_signals.user_logged_in.connect(_logged_in, dispatch_uid="audit-login")
    auth_signals.user_login_failed.connect(_login_failed, dispatch_uid="audit-login-failed")
    auth_signals.user_logged_out.connect(_logged_out, dispatch_uid="audit-logout")
    user_locked_out.connect(_locked_out, dispatch_uid="audit-locked-out")

    pre_save.connect(_user_before, sender=user_model, dispatch_uid="audit-user-pre")
    post_save.connect(_user_after, sender=user_model, dispatch_uid="audit-user-post")
    m2m_changed.connect(_membership_changed, sender=user_model.groups.through,
                        dispatch_uid="audit-membership")

    pre_save.connect(_remember_row, sender=Provider, dispatch_uid="audit-provider-pre")
    post_save.connect(_provider_saved, sender=Provider, dispatch_uid="audit-provider-post")
    pre_save.connect(_remember_row, sender=ModelConfig, dispatch_uid="audit-model-pre")
    post_save.connect(_model_saved, sender=ModelConfig, dispatch_uid="audit-model-post")
    m2m_changed.connect(_model_groups_changed, sender=ModelConfig.groups.through,
                        dispatch_uid="audit-model-groups")

    pre_save.connect(_share_before, sender=ShareLink, dispatch_uid="audit-share-pre")
    post_save.connect(_share_saved, sender=ShareLink, dispatch_uid="audit-share-post")

    request_started.connect(_new_request, dispatch_uid="audit-request-started")
    post_save.connect(_attribute_admin_change, sender=LogEntry, dispatch_uid="audit-logentry")

