"""Writes and reads of conversations: idempotent sends, branches, attempts, the list."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connections

from conversations import tree
from conversations.chat import selectors, services
from conversations.errors import ServiceError
from conversations.models import Conversation, Message, MessageStatus
from tests.support import model

pytestmark = pytest.mark.django_db


def _finish(message: Message, text: str = "answer") -> None:
    Message.objects.filter(pk=message.pk).update(status=MessageStatus.COMPLETE, content=text)


def _chat(user: Any) -> Conversation:
    return services.conversation_create(user, model=model())


def test_posting_stores_the_prompt_and_a_queued_answer_and_titles_the_chat(owner: Any) -> None:
    conversation = _chat(owner)
    result = services.message_post(owner, conversation, text="  How do llamas sleep?  ",
                                   client_id=uuid.uuid4())
    assert result.created
    assert result.user_message.content == "How do llamas sleep?"
    assert result.user_message.author == owner
    assert result.assistant_message.status == MessageStatus.QUEUED
    assert result.assistant_message.parent == result.user_message
    conversation.refresh_from_db()
    assert conversation.title == "How do llamas sleep?"
    assert conversation.active_leaf == result.assistant_message


def test_a_repeated_client_id_returns_the_same_pair_and_starts_nothing(owner: Any) -> None:
    conversation = _chat(owner)
    client_id = uuid.uuid4()
    first = services.message_post(owner, conversation, text="Hi", client_id=client_id)
    _finish(first.assistant_message)
    again = services.message_post(owner, conversation, text="Hi", client_id=client_id)
    assert not again.created
    assert again.user_message.pk == first.user_message.pk
    assert again.assistant_message.pk == first.assistant_message.pk
    assert Message.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_double_send_storm_stores_exactly_one_pair(owner: Any) -> None:
    conversation = _chat(owner)
    client_id = uuid.uuid4()
    barrier = threading.Barrier(8)
    results: list[Any] = []

    def send() -> None:
        barrier.wait()
        try:
            results.append(services.message_post(owner, conversation, text="Once",
                                                  client_id=client_id))
        except ServiceError as exc:  # "busy" is also an acceptable answer
            results.append(exc.code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = [r for r in results if not isinstance(r, str) and r.created]
    assert len(created) == 1
    assert Message.objects.filter(role="user").count() == 1
    assert Message.objects.filter(role="assistant").count() == 1


@pytest.mark.parametrize(("text", "code"), [("", "empty"), ("   \n ", "empty"),
                                            ("x" * 40_000, "prompt_too_large")])
def test_bad_prompts_are_refused_and_change_nothing(owner: Any, text: str, code: str) -> None:
    conversation = _chat(owner)
    with pytest.raises(ServiceError) as info:
        services.message_post(owner, conversation, text=text, client_id=uuid.uuid4())
    assert info.value.code == code and info.value.message
    assert Message.objects.count() == 0


def test_a_new_prompt_waits_while_an_answer_is_being_written(owner: Any) -> None:
    conversation = _chat(owner)
    services.message_post(owner, conversation, text="First", client_id=uuid.uuid4())
    with pytest.raises(ServiceError) as info:
        services.message_post(owner, conversation, text="Second", client_id=uuid.uuid4())
    assert info.value.status == 409


def test_regenerate_and_edit_make_branches_and_delete_nothing(owner: Any) -> None:
    conversation = _chat(owner)
    one = services.message_post(owner, conversation, text="One", client_id=uuid.uuid4())
    _finish(one.assistant_message, "first answer")
    two = services.message_post(owner, conversation, text="Two", client_id=uuid.uuid4())
    _finish(two.assistant_message)
    conversation.refresh_from_db()
    attempt = services.regenerate(owner, conversation, two.assistant_message)
    _finish(attempt, "second attempt")
    conversation.refresh_from_db()
    thread = selectors.thread(conversation)
    assert [n.message.pk for n in thread.nodes] == [one.user_message.pk, one.assistant_message.pk,
                                                   two.user_message.pk, attempt.pk]
    assert (thread.nodes[-1].sibling_index, thread.nodes[-1].sibling_count) == (2, 2)

    edited = services.message_post(owner, conversation, text="One, edited",
                                   client_id=uuid.uuid4(), edit_of=one.user_message)
    _finish(edited.assistant_message)
    conversation.refresh_from_db()
    thread = selectors.thread(conversation)
    assert [n.message.content for n in thread.nodes] == ["One, edited", "answer"]
    assert thread.nodes[0].sibling_count == 2

    # Switch back to the first branch: we land on its newest leaf (the second attempt).
    services.switch_branch(conversation, one.user_message)
    conversation.refresh_from_db()
    leaf = selectors.thread(conversation).nodes[-1].message
    assert leaf.pk == attempt.pk
    assert Message.objects.count() == 7


def test_history_follows_the_active_branch_only(owner: Any) -> None:
    conversation = _chat(owner)
    one = services.message_post(owner, conversation, text="One", client_id=uuid.uuid4())
    _finish(one.assistant_message)
    edited = services.message_post(owner, conversation, text="Other", client_id=uuid.uuid4(),
                                   edit_of=one.user_message)
    history = tree.history_for(edited.assistant_message)
    assert [m.content for m in history] == ["Other"]


def test_renaming_pinning_archiving_and_validation(owner: Any) -> None:
    conversation = _chat(owner)
    services.conversation_update(owner, conversation, title="  My   title ", pinned=True)
    conversation.refresh_from_db()
    assert conversation.title == "My title" and conversation.pinned
    assert not conversation.title_is_auto
    with pytest.raises(ServiceError):
        services.conversation_update(owner, conversation, title="   ")
    services.conversation_update(owner, conversation, archived=True)
    assert selectors.conversation_list_for_user(owner).object_list.count() == 0
    assert selectors.conversation_list_for_user(owner, archived=True).object_list.count() == 1


def test_changing_the_model_keeps_each_answer_s_author_model(owner: Any) -> None:
    conversation = _chat(owner)
    first = services.message_post(owner, conversation, text="Hi", client_id=uuid.uuid4())
    _finish(first.assistant_message)
    services.conversation_update(owner, conversation, model=model("llama-3-70b"))
    conversation.refresh_from_db()
    second = services.message_post(owner, conversation, text="Hi", client_id=uuid.uuid4())
    assert first.assistant_message.model.slug == "llama-3.2-3b"
    assert second.assistant_message.model.slug == "llama-3-70b"


def test_parameters_are_validated_against_the_model(owner: Any) -> None:
    with pytest.raises(ServiceError) as info:
        services.conversation_create(owner, model=model(), params={"temperature": 9})
    assert "temperature" in info.value.message
    conversation = services.conversation_create(owner, model=model(),
                                                params={"temperature": 0.7})
    assert conversation.params == {"temperature": 0.7}


def test_a_disabled_or_hidden_model_is_refused(owner: Any, member: Any) -> None:
    hidden = model("llama-3-70b")
    staff_only = Group.objects.create(name="staff-only")
    hidden.groups.add(staff_only)
    with pytest.raises(ServiceError) as info:
        services.conversation_create(owner, model=hidden)
    assert info.value.code == "model_unavailable"
    member.groups.add(staff_only)
    services.conversation_create(member, model=hidden)
    conversation = _chat(owner)
    model().__class__.objects.filter(slug="llama-3.2-3b").update(enabled=False)
    with pytest.raises(ServiceError):
        services.message_post(owner, conversation, text="Hi", client_id=uuid.uuid4())
    # History still renders (F23).
    assert selectors.thread(conversation).nodes == []


def test_the_list_searches_titles_and_message_text_and_shows_team_chats(owner: Any,
                                                                        member: Any) -> None:
    llamas = services.conversation_create(owner, model=model(), title="About llamas")
    other = _chat(owner)
    services.message_post(owner, other, text="alpacas are cousins", client_id=uuid.uuid4())
    assert {c.pk for c in selectors.conversation_list_for_user(owner, query="llama")} == {
        llamas.pk}
    assert {c.pk for c in selectors.conversation_list_for_user(owner, query="ALPACA")} == {
        other.pk}
    team = Group.objects.create(name="research")
    owner.groups.add(team)
    member.groups.add(team)
    Conversation.objects.filter(pk=llamas.pk).update(team=team)
    assert [c.pk for c in selectors.conversation_list_for_user(member)] == [llamas.pk]


def test_the_list_is_paginated_pinned_first(owner: Any) -> None:
    chats = [_chat(owner) for _ in range(35)]
    services.conversation_update(owner, chats[0], pinned=True)
    page = selectors.conversation_list_for_user(owner)
    assert page.paginator.count == 35 and len(page.object_list) == selectors.LIST_PAGE_SIZE
    assert page.object_list[0].pk == chats[0].pk
    assert len(selectors.conversation_list_for_user(owner, page=2).object_list) == 5


@pytest.mark.django_db(transaction=True)
def test_two_members_writing_at_once_lose_nothing_and_the_second_is_told_to_wait(
    owner: Any, member: Any
) -> None:
    """F11: the conversation row is locked while a prompt is added; the loser gets a clear 409
    instead of overwriting, and every committed message stays."""
    conversation = _chat(owner)
    team = Group.objects.create(name="writers")
    owner.groups.add(team)
    member.groups.add(team)
    Conversation.objects.filter(pk=conversation.pk).update(team=team)
    barrier = threading.Barrier(2)
    outcomes: list[Any] = []

    def send(user: Any, text: str) -> None:
        barrier.wait()
        try:
            fresh = Conversation.objects.get(pk=conversation.pk)
            outcomes.append(services.message_post(user, fresh, text=text,
                                                  client_id=uuid.uuid4()))
        except ServiceError as exc:
            outcomes.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(owner, "from alice")),
               threading.Thread(target=send, args=(member, "from bob"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, ServiceError)]
    assert len(created) == 1 and len(refused) == 1
    assert refused[0].status == 409 and refused[0].code == "busy"
    assert Message.objects.filter(role="user").count() == 1
    conversation.refresh_from_db()
    assert conversation.active_leaf == created[0].assistant_message
