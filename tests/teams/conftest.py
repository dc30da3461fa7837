"""A team "research": alice (owner persona) manages it, bob (member) is a member; charlie
(outsider) is in no team; root (admin_user) is a superuser in no team."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

from conversations.models import TeamSettings


@pytest.fixture
def team(owner: Any, member: Any) -> Group:
    group = Group.objects.create(name="research")
    group.user_set.add(owner, member)
    TeamSettings.objects.create(team=group).managers.add(owner)
    return group
