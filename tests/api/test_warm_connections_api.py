"""Vendor connections stay warm across answers in the server process (issue 16).

Fifty answers in a row through `/v1` on one daphne process reach each vendor over at most two
TCP connections (the emulator counts them), where every answer used to open its own. Counts,
not times: the time a handshake costs is measured by `make bench`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.conftest import ARTIFACTS, ApiServer, openai_client

pytestmark = pytest.mark.django_db(transaction=True)

ANSWERS = 50


@pytest.fixture(scope="module")
def roomy_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[ApiServer]:
    """A server whose rate limit lets one user ask fifty questions in a minute."""
    with django_db_blocker.unblock():
        server = ApiServer(ARTIFACTS / "logs" / "daphne-api-warm.log",
                           RATE_LIMIT_PER_MINUTE="1000", REDIS_URL="")
    yield server
    server.stop()


@pytest.mark.parametrize(("slug", "vendor"), [("llama-3.2-3b", "cloudflare"),
                                              ("llama-3-70b", "qianfan")])
def test_fifty_answers_in_a_row_reach_the_vendor_over_at_most_two_connections(
        roomy_server: ApiServer, emulated: Any, owner: Any, make_token: Any,
        slug: str, vendor: str) -> None:
    client = openai_client(roomy_server, make_token(owner))
    for index in range(ANSWERS):
        if index % 2:
            reply = client.chat.completions.create(
                model=slug, messages=[{"role": "user", "content": f"Question {index}"}])
            assert reply.choices[0].message.content
        else:
            stream = client.chat.completions.create(
                model=slug, stream=True,
                messages=[{"role": "user", "content": f"Question {index}"}])
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert emulated.calls(vendor) == ANSWERS
    assert emulated.connections(vendor) <= 2
