from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chatsite.models import SiteBootstrap
from chatsite.oidc import discovery
from tests.oidc_provider.fixtures import oidc_provider, oidc_provider_process
from tests.oidc_provider.process import CLIENT_ID, CLIENT_SECRET, ProviderProcess

__all__ = ["oidc_provider", "oidc_provider_process"]


@pytest.fixture
def sso(oidc_provider: ProviderProcess, settings: Any, db: Any) -> Iterator[ProviderProcess]:
    """Single sign-on configured as an administrator would, against the test provider."""
    settings.OIDC_ISSUER = oidc_provider.issuer
    settings.OIDC_CLIENT_ID = settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_ENABLED = True
    settings.OIDC_ALLOWED_DOMAINS = []
    settings.OIDC_TEAMS_CLAIM = ""
    settings.OIDC_TEAM_MAP = {}
    settings.OIDC_ONLY = False
    SiteBootstrap.objects.get_or_create(id=1)  # the first administrator was made long ago
    discovery.forget()
    yield oidc_provider
    discovery.forget()
