from __future__ import annotations

from django.conf import settings
from django.db import models


class SiteBootstrap(models.Model):
    """A single row (pk=1) that records the first administrator was created."""

    id = models.PositiveSmallIntegerField(primary_key=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"bootstrapped at {self.created_at:%Y-%m-%d %H:%M}"


class ExternalIdentity(models.Model):
    """A person's account at the OpenID Connect provider (issuer + subject), linked to a user."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="external_identities")
    issuer = models.CharField(max_length=300)
    subject = models.CharField(max_length=255)
    email = models.EmailField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"],
                                               name="external_identity_issuer_subject")]

    def __str__(self) -> str:
        return f"{self.issuer} {self.subject}"
