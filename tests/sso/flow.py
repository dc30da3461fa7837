"""One sign-on as a browser would do it, with Django's test client on our side and real HTTP to
the test provider process on the other."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests
from django.urls import reverse

from tests.oidc_provider.process import PASSWORD, ProviderProcess


def to_provider(client: Any, provider: ProviderProcess, username: str, *,
                next_url: str | None = None) -> str:
    """Start at our sign-on link, sign in at the provider; the callback address it sends back."""
    start = client.get(reverse("oidc_login") + (f"?{urlencode({'next': next_url})}"
                                                if next_url else ""))
    assert start.status_code == 302, start.status_code
    authorize = start["Location"]
    assert authorize.startswith(provider.issuer + "/authorize?"), authorize
    query = dict(parse_qsl(urlsplit(authorize).query))
    answer = requests.post(provider.issuer + "/authorize",
                           data={**query, "username": username, "password": PASSWORD},
                           allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text[:200]
    back = urlsplit(answer.headers["Location"])
    assert back.path == reverse("oidc_callback")
    return back.path + "?" + back.query


def round_trip(client: Any, provider: ProviderProcess, username: str, *,
               next_url: str | None = None) -> Any:
    """The whole sign-on; the response of our callback."""
    return client.get(to_provider(client, provider, username, next_url=next_url))
