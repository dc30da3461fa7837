from __future__ import annotations

from django.db import models


class SiteBootstrap(models.Model):
    """A single row (pk=1) that records the first administrator was created."""

    id = models.PositiveSmallIntegerField(primary_key=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"bootstrapped at {self.created_at:%Y-%m-%d %H:%M}"
