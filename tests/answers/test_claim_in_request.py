"""In a server, the request that stores a message also claims its answer, before its reply is
rendered: the loop's first act for the answer is the vendor call (issue 16). So when the POST's
reply arrives, the answer is already `streaming` and owned by this process, never `queued`
waiting for the loop's thread pool. The answer is inserted claimed, so no update after the
commit claims it."""

from __future__ import annotations

from typing import Any

import pytest

from conversations.chat import services
from conversations.models import Message, MessageStatus
from tests.api.conftest import ApiServer
from tests.support import model, post_live, wait_final

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_answer_is_claimed_by_the_time_the_post_replies(
        api_server: ApiServer, emulated: Any, owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model())
    response = post_live(api_server.url, owner, conversation,
                         "Slowly [[emu:tokens n=3 ttft=1.5]]")
    assert response.status_code == 201, response.text[:300]
    answer = Message.objects.get(pk=response.json()["assistant"]["id"])
    assert answer.status == MessageStatus.STREAMING and answer.runner, answer.status
    # Stored claimed (jobs.claim_at_insert): its heartbeat is from before its insert, not from
    # a claim's update after the commit (and the first partial save waits for a token, 1.5 s).
    assert answer.heartbeat_at is not None and answer.heartbeat_at <= answer.created_at
    final = wait_final(answer.pk)
    assert final.status == MessageStatus.COMPLETE and final.content
