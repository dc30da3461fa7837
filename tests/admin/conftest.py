"""Fixtures and helpers for the admin console tests: fast hashing, a filled console, forms."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.forms import MultiWidget
from django.test import Client
from django.utils import timezone

from conversations.models import (
    ApiToken,
    AuditEvent,
    Budget,
    Conversation,
    Message,
    ShareLink,
    TeamSettings,
    UsageRecord,
)
from providers.models import ModelConfig, Provider

API_TOKEN = "llc_live_0123456789abcdefghijklmnopqrstuv"
PROVIDER_KEY = "sk-console-secret-9876"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    """Personas are created per test; PBKDF2 would spend most of this folder's time on them."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def console(owner: Any, member: Any) -> dict[str, Any]:
    """One row of everything the console lists, owned by ordinary users."""
    team = Group.objects.create(name="red")
    TeamSettings.objects.create(team=team, members_can_continue=False)
    owner.groups.add(team)
    model = ModelConfig.objects.order_by("pk").first()
    conversation = Conversation.objects.create(owner=owner, team=team, model=model,
                                               title="Quarterly plan")
    message = Message.objects.create(conversation=conversation, seq=1, role="user",
                                     author=owner, content="hello there")
    budget = Budget.objects.create(user=owner, period="day", max_tokens=1000)
    usage = UsageRecord.objects.create(user=owner, team=team, model=model, message=message,
                                       prompt_tokens=12, completion_tokens=30,
                                       cost=Decimal("0.0012"), status="complete",
                                       finished_at=timezone.now())
    token = ApiToken.objects.create(user=owner, name="laptop", prefix=API_TOKEN[:12],
                                    digest=hashlib.sha256(API_TOKEN.encode()).hexdigest())
    share = ShareLink.objects.create(conversation=conversation, created_by=owner,
                                     expires_at=timezone.now() + timedelta(days=3))
    provider = Provider.objects.get(kind="dashscope")
    provider.set_credentials({"api_key": PROVIDER_KEY})
    provider.save()
    event = AuditEvent.objects.filter(action="share.created").first()
    return {"team": team, "model": model, "conversation": conversation, "message": message,
            "budget": budget, "usage": usage, "token": token, "share": share,
            "provider": provider, "event": event, "owner": owner, "member": member}


def change_form_payload(client: Client, url: str, **overrides: Any) -> dict[str, Any]:
    """What a browser posts for the admin change form at `url`, untouched, plus `overrides`."""
    page = client.get(url)
    assert page.status_code == 200, url
    form = page.context["adminform"].form
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        if field.disabled:
            continue
        value = form[name].value()
        if isinstance(field.widget, MultiWidget):
            parts = field.widget.decompress(value)
            data.update({f"{name}_{i}": "" if part is None else str(part)
                         for i, part in enumerate(parts)})
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        elif isinstance(value, list | tuple):
            data[name] = [str(v) for v in value]
        elif value is not None:
            data[name] = str(value)
    for name, value in overrides.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return data


def without_csrf(body: bytes) -> bytes:
    """A page with its per-response CSRF token values blanked out."""
    return re.sub(rb'name="csrfmiddlewaretoken" value="[^"]*"',
                  b'name="csrfmiddlewaretoken" value=""', body)
