"""Presets: who sees, uses, edits and publishes them; validation; the new-chat page; starting a
chat from one; export and import."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.http import Http404
from django.test import Client

from conversations.access import Access, get_preset_for, preset_access, presets_visible_to
from conversations.chat import services as chat_services
from conversations.chat import transfer
from conversations.errors import ServiceError
from conversations.models import AuditEvent, Conversation, Preset
from conversations.presets import services
from conversations.presets.services import PresetData
from providers.models import ModelConfig
from tests.support import model, signed_in

pytestmark = pytest.mark.django_db


def _personal(user: Any, name: str = "Poet", **extra: Any) -> Preset:
    return services.preset_create(user, PresetData(name=name, model=model(), **extra))


# --- who sees what ------------------------------------------------------------------------------
def test_a_personal_preset_is_its_owners_alone(owner: Any, member: Any, outsider: Any,
                                               admin_user: Any) -> None:
    mine = _personal(member, system_prompt="Rhyme.")
    assert mine.scope == Preset.Scope.PERSONAL and mine.owner == member
    assert preset_access(member, mine) == Access.MANAGE
    for other in (owner, outsider, admin_user):
        assert preset_access(other, mine) == Access.NONE
        assert mine not in presets_visible_to(other)
        with pytest.raises(Http404):
            get_preset_for(other, mine.slug)


def test_team_members_use_a_team_preset_and_only_managers_edit_it(
        owner: Any, member: Any, outsider: Any, translator: Preset) -> None:
    assert preset_access(member, translator) == Access.READ
    assert preset_access(owner, translator) == Access.MANAGE
    assert preset_access(outsider, translator) == Access.NONE
    assert list(presets_visible_to(member)) == [translator]
    assert list(presets_visible_to(outsider)) == []


def test_everyone_sees_a_site_preset_and_only_superusers_publish_one(
        owner: Any, outsider: Any, admin_user: Any) -> None:
    with pytest.raises(ServiceError) as refused:
        services.preset_create(owner, PresetData(name="House style", model=model(),
                                                 scope=Preset.Scope.SITE))
    assert refused.value.status == 403
    site = services.preset_create(admin_user, PresetData(name="House style", model=model(),
                                                         scope=Preset.Scope.SITE))
    assert site.owner is None
    assert preset_access(outsider, site) == Access.READ
    assert preset_access(admin_user, site) == Access.MANAGE


def test_a_member_who_is_not_a_manager_cannot_publish_to_the_team(
        member: Any, team: Group) -> None:
    with pytest.raises(ServiceError) as refused:
        services.preset_create(member, PresetData(name="Sneaky", model=model(),
                                                  scope=Preset.Scope.TEAM, team=team))
    assert refused.value.code == "preset_forbidden"
    assert not Preset.objects.exists()


def test_a_manager_publishes_to_the_team_and_it_is_audited(owner: Any, team: Group) -> None:
    preset = services.preset_create(owner, PresetData(
        name="Translator", icon="🌐", model=model(), scope=Preset.Scope.TEAM, team=team,
        system_prompt="Translate into French.", starters=["Hello", "  ", "Bye"]))
    assert preset.team == team and preset.owner is None
    assert preset.starters == ["Hello", "Bye"]
    assert preset.slug == "translator"
    event = AuditEvent.objects.get(action="preset.published")
    assert event.actor_id == owner.pk and "translator" in event.target


# --- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "code"), [
    ("name", "   ", "preset_name"),
    ("name", "x" * 81, "preset_name"),
    ("icon", "a very long icon", "preset_icon"),
    ("icon", "a b", "preset_icon"),
    ("starters", ["s"] * 7, "preset_starters"),
    ("starters", ["x" * 501], "preset_starters"),
    ("params", {"temperature": 99}, "bad_parameter"),
    ("params", {"no_such_thing": 1}, "bad_parameter"),
])
def test_bad_preset_content_is_refused_with_a_clear_message(
        owner: Any, field: str, value: Any, code: str) -> None:
    data = PresetData(name="Fine", model=model())
    setattr(data, field, value)
    with pytest.raises(ServiceError) as refused:
        services.preset_create(owner, data)
    assert refused.value.code == code and refused.value.message
    assert not Preset.objects.exists()


def test_one_emoji_with_modifiers_is_a_valid_icon(owner: Any) -> None:
    assert _personal(owner, icon="👩🏽‍💻").icon == "👩🏽‍💻"
    assert _personal(owner, name="Other", icon="EN").icon == "EN"


def test_two_presets_of_one_name_get_different_slugs(owner: Any, member: Any) -> None:
    first, second = _personal(owner, "Same"), _personal(member, "Same")
    assert first.slug == "same" and second.slug.startswith("same-")


def test_a_preset_needs_a_model_its_writer_may_use(owner: Any) -> None:
    restricted = model("llama-3.2-11b-vision")
    restricted.groups.add(Group.objects.create(name="Vision people"))
    with pytest.raises(ServiceError) as refused:
        _personal(owner, model=None) if False else services.preset_create(
            owner, PresetData(name="Eyes", model=restricted))
    assert refused.value.code == "model_unavailable"


# --- starting a chat from a preset --------------------------------------------------------------
def test_starting_a_chat_copies_the_preset_and_later_edits_do_not_rewrite_it(
        owner: Any, member: Any, translator: Preset) -> None:
    conversation = chat_services.conversation_create_from_preset(member, translator)
    assert conversation.preset == translator
    assert conversation.system_prompt == "Translate everything into French."
    assert conversation.params == {"temperature": 0.2}
    services.preset_update(owner, translator, PresetData(
        name="Translator", model=translator.model, scope=Preset.Scope.TEAM,
        team=translator.team, system_prompt="Translate into German."))
    conversation.refresh_from_db()
    assert conversation.system_prompt == "Translate everything into French."


def test_an_outsider_cannot_start_a_chat_from_a_team_preset(outsider: Any,
                                                            translator: Preset) -> None:
    with pytest.raises(ServiceError) as refused:
        chat_services.conversation_create_from_preset(outsider, translator)
    assert refused.value.status == 404
    assert not Conversation.objects.exists()


def test_a_preset_whose_model_the_user_may_not_use_says_so(owner: Any, member: Any,
                                                           translator: Preset) -> None:
    secret = Group.objects.create(name="Model testers")
    owner.groups.add(secret)
    translator.model.groups.add(secret)
    with pytest.raises(ServiceError) as refused:
        chat_services.conversation_create_from_preset(member, translator)
    assert "Translator" in refused.value.message and "not available" in refused.value.message
    page = signed_in(member).get("/?preset=translator")
    assert page.status_code == 200
    assert "is not available to you" in page.content.decode()
    assert 'name="preset"' not in page.content.decode()


# --- the pages --------------------------------------------------------------------------------
def test_the_new_chat_page_offers_presets_and_fills_in_the_chosen_one(
        member: Any, translator: Preset) -> None:
    client = signed_in(member)
    html = client.get("/").content.decode()
    assert 'href="/?preset=translator"' in html and "Translator" in html
    assert 'href="/presets/"' in html  # the new-chat page and the sidebar footer link there
    html = client.get("/?preset=translator").content.decode()
    assert '<input type="hidden" name="preset" value="translator">' in html
    assert "Translate everything into French." in html
    assert 'value="0.2"' in html  # the preset's temperature
    assert "Translate: good morning" in html and "data-starter" in html


def test_posting_the_new_chat_form_with_a_preset_records_it(member: Any,
                                                            translator: Preset) -> None:
    client = signed_in(member)
    response = client.post("/c/new/", {
        "model": "llama-3.2-3b", "system_prompt": translator.system_prompt,
        "param_temperature": "0.2", "text": "good night", "preset": "translator"})
    assert response.status_code == 302
    conversation = Conversation.objects.get()
    assert conversation.preset == translator and conversation.owner == member


def test_another_teams_preset_is_not_found_for_an_outsider(outsider: Any,
                                                           translator: Preset) -> None:
    client = signed_in(outsider)
    assert client.get("/?preset=translator").status_code == 404
    assert client.get("/presets/translator/edit/").status_code == 404
    assert "Translator" not in client.get("/presets/").content.decode()
    response = client.post("/c/new/", {"model": "llama-3.2-3b", "text": "hi",
                                       "preset": "translator"})
    assert response.status_code == 404
    assert not Conversation.objects.exists()


def test_a_member_sees_the_team_preset_but_cannot_edit_or_delete_it(
        member: Any, translator: Preset) -> None:
    client = signed_in(member)
    html = client.get("/presets/").content.decode()
    assert "Translator" in html and "/presets/translator/edit/" not in html
    assert client.get("/presets/translator/edit/").status_code == 404
    assert client.post("/presets/translator/delete/").status_code == 404
    assert Preset.objects.filter(slug="translator").exists()


def test_a_manager_publishes_a_preset_through_the_page(owner: Any, member: Any,
                                                       team: Group) -> None:
    client = signed_in(owner)
    page = client.get("/presets/new/").content.decode()
    assert f'value="team:{team.pk}"' in page and 'value="site"' not in page
    response = client.post("/presets/new/", {
        "name": "Translator", "icon": "🌐", "scope": f"team:{team.pk}",
        "model": "llama-3.2-3b", "system_prompt": "Translate into French.",
        "starters": "Translate: hello\nTranslate: thanks", "param_temperature": "0.3"})
    assert response.status_code == 302, response.content.decode()[:2000]
    preset = Preset.objects.get()
    assert (preset.scope, preset.team, preset.params) == ("team", team, {"temperature": 0.3})
    assert preset.starters == ["Translate: hello", "Translate: thanks"]
    assert "Translator" in signed_in(member).get("/presets/").content.decode()


def test_a_member_cannot_forge_a_team_scope_in_the_form(member: Any, team: Group) -> None:
    response = signed_in(member).post("/presets/new/", {
        "name": "Forged", "scope": f"team:{team.pk}", "model": "llama-3.2-3b"})
    assert response.status_code == 400
    assert not Preset.objects.exists()


def test_bad_form_input_shows_the_error_and_changes_nothing(owner: Any) -> None:
    response = signed_in(owner).post("/presets/new/", {
        "name": "Many", "scope": "personal", "model": "llama-3.2-3b",
        "starters": "\n".join(f"starter {n}" for n in range(7))})
    assert response.status_code == 400
    assert "At most 6 starter prompts." in response.content.decode()
    assert not Preset.objects.exists()


def test_the_owner_edits_and_deletes_a_personal_preset(owner: Any) -> None:
    preset = _personal(owner, "Poet")
    client = signed_in(owner)
    response = client.post(f"/presets/{preset.slug}/edit/", {
        "name": "Poet laureate", "scope": "personal", "model": "llama-3.2-3b",
        "system_prompt": "Sonnets only."})
    assert response.status_code == 302
    preset.refresh_from_db()
    assert (preset.name, preset.system_prompt) == ("Poet laureate", "Sonnets only.")
    conversation = chat_services.conversation_create_from_preset(owner, preset)
    assert client.post(f"/presets/{preset.slug}/delete/").status_code == 302
    conversation.refresh_from_db()
    assert conversation.preset is None and conversation.system_prompt == "Sonnets only."


def test_preset_writes_need_the_csrf_token(owner: Any) -> None:
    preset = _personal(owner)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(f"/presets/{preset.slug}/delete/").status_code == 403
    assert client.post("/presets/new/", {"name": "x", "scope": "personal",
                                         "model": "llama-3.2-3b"}).status_code == 403
    assert Preset.objects.count() == 1


def test_the_presets_page_is_translated(member: Any, translator: Preset) -> None:
    client = signed_in(member)
    html = client.get("/presets/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "预设" in html and "开始对话" in html
    html = client.get("/?preset=translator", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "从预设开始" in html


# --- export and import ------------------------------------------------------------------------
def test_an_export_carries_the_preset_and_an_import_links_the_visible_one(
        member: Any, translator: Preset) -> None:
    conversation = chat_services.conversation_create_from_preset(member, translator)
    data = transfer.export_data(conversation)
    assert data["preset"]["slug"] == "translator"
    assert data["preset"]["system_prompt"] == "Translate everything into French."
    assert data["preset"]["starters"] == translator.starters
    imported = transfer.import_conversation(member, json.dumps(data).encode())
    assert imported.preset == translator
    assert Preset.objects.count() == 1


def test_an_import_by_someone_else_recreates_a_personal_preset(
        member: Any, outsider: Any, translator: Preset) -> None:
    data = transfer.export_data(chat_services.conversation_create_from_preset(member,
                                                                             translator))
    imported = transfer.import_conversation(outsider, json.dumps(data).encode())
    copy = imported.preset
    assert copy is not None and copy != translator
    assert (copy.scope, copy.owner, copy.name) == ("personal", outsider, "Translator")
    assert copy.system_prompt == translator.system_prompt and copy.params == {"temperature": 0.2}
    again = transfer.import_conversation(outsider, json.dumps(data).encode())
    assert again.preset == copy  # the same content links the copy made the first time
    assert Preset.objects.filter(owner=outsider).count() == 1


def test_an_import_with_an_invalid_preset_is_refused_and_stores_nothing(owner: Any) -> None:
    conversation = chat_services.conversation_create(owner, model=model())
    data = transfer.export_data(conversation)
    data["preset"] = {"slug": "x", "name": "Bad", "model": "llama-3.2-3b",
                      "starters": ["s"] * 9}
    before = Conversation.objects.count()
    with pytest.raises(transfer.ImportRefused, match="At most 6"):
        transfer.import_conversation(owner, json.dumps(data).encode())
    assert Conversation.objects.count() == before and not Preset.objects.exists()


def test_the_admin_lists_presets(admin_user: Any, translator: Preset) -> None:
    html = signed_in(admin_user).get("/admin/conversations/preset/").content.decode()
    assert "Translator" in html
    assert ModelConfig.objects.exists()


def test_a_chinese_name_gets_a_usable_slug(owner: Any) -> None:
    first, second = _personal(owner, "翻译"), _personal(owner, "翻译")
    assert first.slug == "preset" and second.slug.startswith("preset-")
    assert first.name == "翻译"


def test_the_markdown_export_names_the_preset(member: Any, translator: Preset) -> None:
    conversation = chat_services.conversation_create_from_preset(member, translator)
    assert "> **Preset:** 🌐 Translator" in transfer.export_markdown(conversation)


def test_the_admin_validates_presets_like_the_page(admin_user: Any) -> None:
    client = signed_in(admin_user)
    base = {"slug": "house", "name": "House style", "icon": "EN", "scope": "site", "owner": "",
            "team": "", "model": str(model().pk), "system_prompt": "Be concise.",
            "params": "{}"}
    refused = client.post("/admin/conversations/preset/add/",
                          {**base, "starters": json.dumps(["s"] * 7)})
    assert refused.status_code == 200 and "At most 6 starter prompts." in refused.content.decode()
    assert not Preset.objects.exists()
    done = client.post("/admin/conversations/preset/add/",
                       {**base, "starters": json.dumps(["Summarise this"])})
    assert done.status_code == 302
    preset = Preset.objects.get()
    assert (preset.scope, preset.owner, preset.created_by) == ("site", None, admin_user)
