"""Team settings (teams are Django groups)."""

from __future__ import annotations


def members_can_continue(team_id: int) -> bool:
    from conversations.models import TeamSettings

    settings_row = TeamSettings.objects.filter(team_id=team_id).only("members_can_continue").first()
    # No settings row yet: the field's default (members may continue) applies.
    return True if settings_row is None else settings_row.members_can_continue
