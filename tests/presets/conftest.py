"""Presets tests: a team with a manager (owner) and a member; the outsider is in no team."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import translation

from conversations.models import Preset, TeamSettings
from tests.api.conftest import api_server, make_token  # noqa: F401  (fixtures for /v1 tests)
from tests.support import model


@pytest.fixture
def team(owner: Any, member: Any) -> Group:
    group = Group.objects.create(name="Linguists")
    owner.groups.add(group)
    member.groups.add(group)
    settings_row, _ = TeamSettings.objects.get_or_create(team=group)
    settings_row.managers.add(owner)
    return group


@pytest.fixture
def translator(team: Group, owner: Any) -> Preset:
    return Preset.objects.create(
        slug="translator", name="Translator", icon="🌐", scope=Preset.Scope.TEAM, team=team,
        model=model(), system_prompt="Translate everything into French.",
        params={"temperature": 0.2}, starters=["Translate: good morning", "Translate: thanks"],
        created_by=owner)


@pytest.fixture(autouse=True)
def _english() -> Any:
    """Messages are compared in English; a page read in Chinese leaves its language active."""
    with translation.override("en"):
        yield
