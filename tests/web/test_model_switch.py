"""The model at hand: switching a conversation's model for the next answer, the remembered
default, and who may switch (owner, a teammate who may continue; outsiders see nothing)."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from conversations.answers import history
from conversations.chat import selectors, services
from conversations.models import (
    Conversation,
    Message,
    MessageStatus,
    TeamSettings,
    UserPreferences,
)
from providers.models import ModelConfig
from tests.images import image_corpus as corpus
from tests.support import model, signed_in

pytestmark = pytest.mark.django_db


def _chat(user: Any, slug: str = "llama-3.2-3b") -> Conversation:
    return services.conversation_create(user, model=model(slug))


def _switch(client: Client, conversation: Conversation, slug: str, *, json: bool = True) -> Any:
    extra = {"HTTP_ACCEPT": "application/json"} if json else {}
    return client.post(f"/c/{conversation.pk}/model/", {"model": slug}, **extra)


def _finish_last(conversation: Conversation) -> None:
    Message.objects.filter(conversation=conversation, role="assistant").update(
        status=MessageStatus.COMPLETE, content="done")


def _upload(user: Any, data: bytes) -> uuid.UUID:
    handle = io.BytesIO(data)
    handle.name = "photo.png"
    response = signed_in(user).post("/uploads/", {"image": handle},
                                    HTTP_ACCEPT="application/json")
    assert response.status_code == 201, response.content
    return uuid.UUID(response.json()["id"])


@pytest.fixture
def team_chat(owner: Any, member: Any) -> Conversation:
    team = Group.objects.create(name="research")
    owner.groups.add(team)
    member.groups.add(team)
    conversation = _chat(owner)
    Conversation.objects.filter(pk=conversation.pk).update(team=team)
    conversation.refresh_from_db()
    return conversation


# --- who may switch -------------------------------------------------------------------------
def test_the_owner_switches_and_the_choice_is_kept_for_the_conversation_and_as_default(
        owner: Any) -> None:
    conversation = _chat(owner)
    response = _switch(signed_in(owner), conversation, "llama-3.2-11b-vision")
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["slug"] == "llama-3.2-11b-vision" and body["model"]["vision"] is True
    assert "Llama 3.2 11B Vision Instruct" in body["message"] and body["notes"] == []
    conversation.refresh_from_db()
    assert conversation.model.slug == "llama-3.2-11b-vision"
    assert UserPreferences.objects.get(user=owner).default_model.slug == "llama-3.2-11b-vision"
    # The page shows the switcher with the new model selected.
    page = signed_in(owner).get(f"/c/{conversation.pk}/").content.decode()
    assert 'id="model-switch"' in page
    assert 'value="llama-3.2-11b-vision" data-vision="1"' in page
    selected = page.split('value="llama-3.2-11b-vision"', 1)[1].split(">", 1)[0]
    assert "selected" in selected


def test_a_form_post_without_scripts_redirects_back_with_the_news(owner: Any) -> None:
    conversation = _chat(owner)
    response = _switch(signed_in(owner), conversation, "llama-3-70b", json=False)
    assert response.status_code == 302 and response["Location"] == f"/c/{conversation.pk}/"
    conversation.refresh_from_db()
    assert conversation.model.slug == "llama-3-70b"


def test_a_teammate_who_may_continue_may_switch(team_chat: Conversation, member: Any,
                                                owner: Any) -> None:
    response = _switch(signed_in(member), team_chat, "llama-3-70b")
    assert response.status_code == 200
    team_chat.refresh_from_db()
    assert team_chat.model.slug == "llama-3-70b"
    # Their own default follows their choice; the owner's is untouched.
    assert UserPreferences.objects.get(user=member).default_model.slug == "llama-3-70b"
    assert not UserPreferences.objects.filter(user=owner, default_model__slug="llama-3-70b"
                                              ).exists()


def test_a_read_only_teammate_and_outsiders_get_not_found_and_change_nothing(
        team_chat: Conversation, member: Any, outsider: Any, django_user_model: Any) -> None:
    TeamSettings.objects.create(team=team_chat.team, members_can_continue=False)
    stranger = django_user_model.objects.create_user("dora", password="x-very-long-pass")
    for user in (member, outsider, stranger):
        assert _switch(signed_in(user), team_chat, "llama-3-70b").status_code == 404
    assert Client().post(f"/c/{team_chat.pk}/model/", {"model": "llama-3-70b"}
                         ).status_code == 302  # to sign in
    team_chat.refresh_from_db()
    assert team_chat.model.slug == "llama-3.2-3b"
    assert not UserPreferences.objects.exists()
    # A read-only member sees the model, not a switcher.
    page = signed_in(member).get(f"/c/{team_chat.pk}/").content.decode()
    assert 'id="model-switch"' not in page and "model-badge" in page


def test_switching_needs_a_post(owner: Any) -> None:
    conversation = _chat(owner)
    assert signed_in(owner).get(f"/c/{conversation.pk}/model/").status_code == 405


# --- which models -----------------------------------------------------------------------------
@pytest.mark.parametrize("slug", ["", "no-such-model", "llama-3-70b"])
def test_a_model_the_user_may_not_use_is_refused_and_nothing_changes(owner: Any,
                                                                    slug: str) -> None:
    conversation = _chat(owner)
    hidden = model("llama-3-70b")
    hidden.groups.add(Group.objects.create(name="staff-only"))
    response = _switch(signed_in(owner), conversation, slug)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_unavailable"
    conversation.refresh_from_db()
    assert conversation.model.slug == "llama-3.2-3b"
    assert not UserPreferences.objects.exists()
    # Without scripts: back to the page with the message.
    response = _switch(signed_in(owner), conversation, slug, json=False)
    assert response.status_code == 302


def test_a_disabled_model_is_refused(owner: Any) -> None:
    conversation = _chat(owner)
    ModelConfig.objects.filter(slug="llama-3-70b").update(enabled=False)
    assert _switch(signed_in(owner), conversation, "llama-3-70b").status_code == 400


def test_a_model_that_needs_an_image_is_taken_and_the_next_message_must_bring_one(
        owner: Any) -> None:
    conversation = _chat(owner)
    response = _switch(signed_in(owner), conversation, "llama-3.2-90b-vision")
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["requires_image"] is True
    assert body["notes"] == ["Llama 3.2 90B Vision Instruct needs an image: attach one to your "
                             "next message."]
    # The composer asks for it on the page too.
    page = signed_in(owner).get(f"/c/{conversation.pk}/").content.decode()
    assert 'data-requires-image="1"' in page.split('id="composer"', 1)[1]


def test_a_text_model_after_images_is_told_the_images_become_markers(owner: Any,
                                                                     settings: Any,
                                                                     tmp_path: Any) -> None:
    settings.MEDIA_ROOT = tmp_path
    conversation = _chat(owner, "llama-3.2-11b-vision")
    image = _upload(owner, corpus.png_1x1())
    services.message_post(owner, conversation, text="What is this?", client_id=uuid.uuid4(),
                          attachment_ids=[image])
    _finish_last(conversation)
    conversation.refresh_from_db()
    response = _switch(signed_in(owner), conversation, "llama-3.2-3b")
    assert response.status_code == 200
    assert response.json()["notes"] == [
        "Llama 3.2 3B Instruct reads text only: the images in this conversation are sent to "
        "it as “[image]”."]
    # The next answer comes from the new model and reads the image as a marker.
    conversation.refresh_from_db()
    result = services.message_post(owner, conversation, text="And now?", client_id=uuid.uuid4())
    answer = result.assistant_message
    assert answer.model.slug == "llama-3.2-3b"
    shaped = history.request_for(Message.objects.select_related("conversation").get(
        pk=answer.pk))
    first = shaped.request.messages[0] if shaped.request.messages[0].role == "user" else \
        shaped.request.messages[1]
    assert first.text == "[image] What is this?" and first.images == ()
    # Earlier answers keep the model that wrote them.
    assert Message.objects.filter(conversation=conversation, role="assistant",
                                  model__slug="llama-3.2-11b-vision").count() == 1


def test_parameters_the_new_model_does_not_take_are_dropped(owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model(),
                                                params={"max_tokens": 300, "seed": 7})
    _switch(signed_in(owner), conversation, "llama-3-70b")
    conversation.refresh_from_db()
    assert conversation.params == {"max_tokens": 300}  # Qianfan takes no seed


# --- the new-chat page and the remembered default ---------------------------------------------
def test_the_new_chat_page_lists_each_model_with_provider_ability_and_price(owner: Any) -> None:
    model()
    page = signed_in(owner).get("/").content.decode()
    assert ("Llama 3.2 3B Instruct · Cloudflare Workers AI · text · $0.05 / $0.34 per M tokens"
            in page)
    assert "Llama 3.2 11B Vision Instruct · Cloudflare Workers AI · vision · $0.05 / $0.68" in page
    assert "Meta-Llama-3-70B-Instruct · Baidu Qianfan · text · free" in page


def test_the_price_hint_reads_free_or_per_million_tokens(owner: Any) -> None:
    model()
    by_slug = {c.model.slug: c.price for c in selectors.model_choices(owner)}
    assert by_slug["llama-3.2-3b"] == "$0.05 / $0.34 per M tokens"
    assert by_slug["llama-3-70b"] == "free"


def test_starting_a_chat_remembers_the_model_and_the_next_new_chat_preselects_it(
        owner: Any) -> None:
    model()
    client = signed_in(owner)
    page = client.get("/").content.decode()
    assert _selected(page) == "llama-3.2-11b-vision" or _selected(page) == "llama-3.2-3b"
    response = client.post("/c/new/", {"model": "llama-3-70b", "text": "Hello",
                                       "client_id": str(uuid.uuid4())})
    assert response.status_code == 302
    assert UserPreferences.objects.get(user=owner).default_model.slug == "llama-3-70b"
    assert _selected(client.get("/").content.decode()) == "llama-3-70b"


def test_a_default_the_user_may_no_longer_use_falls_back_to_the_first_model(owner: Any) -> None:
    hidden = model("llama-3-70b")
    UserPreferences.objects.create(user=owner, default_model=hidden)
    hidden.groups.add(Group.objects.create(name="staff-only"))
    page = signed_in(owner).get("/").content.decode()
    assert _selected(page) != "llama-3-70b" and "llama-3-70b" not in page


def _selected(page: str) -> str:
    select = page.split('id="id_model"', 1)[1].split("</select>", 1)[0]
    for option in select.split("<option")[1:]:
        head = option.split(">", 1)[0]
        if " selected" in head:
            return head.split('value="', 1)[1].split('"', 1)[0]
    return ""


# --- share and export from the header -----------------------------------------------------------
def test_share_and_export_are_reachable_from_the_conversation_header(owner: Any,
                                                                     team_chat: Conversation,
                                                                     member: Any) -> None:
    page = signed_in(owner).get(f"/c/{team_chat.pk}/").content.decode()
    header = page.split('<header class="pane-head">', 1)[1].split("</header>", 1)[0]
    assert f'href="/c/{team_chat.pk}/settings/#share"' in header
    for fmt in ("md", "json", "zip"):
        assert f'href="/c/{team_chat.pk}/export/?format={fmt}"' in header
    # A teammate may export (they may read) but not share (they may not manage).
    header = signed_in(member).get(f"/c/{team_chat.pk}/").content.decode().split(
        '<header class="pane-head">', 1)[1].split("</header>", 1)[0]
    assert f"/c/{team_chat.pk}/export/?format=md" in header
    assert "#share" not in header
