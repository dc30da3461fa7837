"""/manage/models/: enable, order, rename, visibility per team, prices, each team's default model,
and the chat's model switcher reading from there."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from conversations.models import AuditEvent, TeamSettings, UserPreferences
from providers.models import ModelConfig
from tests.support import model, seed_catalogue, signed_in

pytestmark = pytest.mark.django_db

PAGE = "/manage/models/"


@pytest.fixture(autouse=True)
def _catalogue() -> None:
    seed_catalogue()


def _switcher(user: Any) -> list[tuple[str, str]]:
    """(slug, label) of each option of the new-chat page's model switcher, in order."""
    html = signed_in(user).get("/").content.decode()
    select = re.search(r'<select id="id_model".*?</select>', html, re.S)
    assert select
    return re.findall(r'<option value="([^"]+)"[^>]*>([^<]*)</option>', select.group(0))


def _selected(user: Any) -> str:
    html = signed_in(user).get("/").content.decode()
    select = re.search(r'<select id="id_model".*?</select>', html, re.S)
    assert select
    match = re.search(r'<option value="([^"]+)"[^>]*selected', select.group(0))
    assert match
    return match.group(1)


def _edit(m: ModelConfig, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "display_name": m.display_name, "enabled": "on" if m.enabled else "",
        "sort_order": m.sort_order, "groups": [g.pk for g in m.groups.all()],
        "price_input_per_mtok": m.price_input_per_mtok,
        "price_output_per_mtok": m.price_output_per_mtok, "currency": m.currency,
    }
    if m.for_titles:
        data["for_titles"] = "on"
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


def test_the_page_lists_every_model_in_the_switchers_order(admin_user: Any) -> None:
    html = signed_in(admin_user).get(PAGE).content.decode()
    slugs = re.findall(r'data-model="([^"]+)"', html)
    assert slugs == list(ModelConfig.objects.order_by("sort_order", "display_name")
                         .values_list("slug", flat=True))


def test_a_renamed_model_shows_under_its_new_name_in_the_switcher(
        admin_user: Any, owner: Any) -> None:
    llama = model("llama-3.2-3b")
    response = signed_in(admin_user).post(f"/manage/models/{llama.slug}/",
                                          _edit(llama, display_name="Quick Llama"))
    assert response.status_code == 302
    labels = dict(_switcher(owner))
    assert labels[llama.slug].startswith("Quick Llama")
    event = AuditEvent.objects.filter(action="model.changed").order_by("pk").last()
    assert event is not None and event.actor_id == admin_user.pk


def test_moving_a_model_up_moves_it_up_in_the_switcher(admin_user: Any, owner: Any) -> None:
    before = [slug for slug, _label in _switcher(owner)]
    last = before[-1]
    client = signed_in(admin_user)
    for _step in range(len(before) - 1):
        assert client.post(f"/manage/models/{last}/move/", {"direction": "up"}).status_code == 302
    after = [slug for slug, _label in _switcher(owner)]
    assert after[0] == last
    assert after[1:] == [s for s in before if s != last]
    # Renumbered in steps of ten, so later edits have room.
    assert list(ModelConfig.objects.order_by("sort_order").values_list("sort_order", flat=True)
                ) == [10, 20, 30, 40]


def test_a_move_in_no_known_direction_changes_nothing(admin_user: Any) -> None:
    orders = list(ModelConfig.objects.values_list("slug", "sort_order"))
    response = signed_in(admin_user).post("/manage/models/llama-3-70b/move/",
                                          {"direction": "sideways"}, follow=True)
    assert response.status_code == 200 and "Choose up or down." in response.content.decode()
    assert list(ModelConfig.objects.values_list("slug", "sort_order")) == orders
    assert signed_in(admin_user).post("/manage/models/nope/move/",
                                      {"direction": "up"}).status_code == 404


def test_a_disabled_model_leaves_the_switcher(admin_user: Any, owner: Any) -> None:
    llama = model("llama-3-70b")
    signed_in(admin_user).post(f"/manage/models/{llama.slug}/", _edit(llama, enabled=""))
    assert llama.slug not in dict(_switcher(owner))
    assert not ModelConfig.objects.get(pk=llama.pk).enabled


def test_the_list_disables_and_enables_a_model_in_one_click(
        admin_user: Any, owner: Any) -> None:
    llama = model("llama-3.2-11b-vision")
    ModelConfig.objects.filter(pk=llama.pk).update(for_titles=True)
    client = signed_in(admin_user)
    response = client.post(f"/manage/models/{llama.slug}/enabled/", {"enabled": "0"},
                           follow=True)
    assert "no longer writes conversation titles" in response.content.decode()
    assert llama.slug not in dict(_switcher(owner))
    fresh = ModelConfig.objects.get(pk=llama.pk)
    assert not fresh.enabled and not fresh.for_titles
    client.post(f"/manage/models/{llama.slug}/enabled/", {"enabled": "1"})
    assert llama.slug in dict(_switcher(owner))
    assert client.post(f"/manage/models/{llama.slug}/enabled/",
                       {"enabled": "maybe"}).status_code == 302
    assert ModelConfig.objects.get(pk=llama.pk).enabled


def test_a_model_for_one_team_shows_only_to_its_members(
        admin_user: Any, member: Any, outsider: Any) -> None:
    team = Group.objects.create(name="Research")
    member.groups.add(team)
    llama = model("llama-3-70b")
    signed_in(admin_user).post(f"/manage/models/{llama.slug}/", _edit(llama, groups=[team.pk]))
    assert llama.slug in dict(_switcher(member))
    assert llama.slug not in dict(_switcher(outsider))


def test_prices_are_saved_and_a_bad_price_or_currency_changes_nothing(admin_user: Any) -> None:
    llama = model("llama-3.2-3b")
    client = signed_in(admin_user)
    response = client.post(f"/manage/models/{llama.slug}/",
                           _edit(llama, price_input_per_mtok="0.5", currency="eur"))
    assert response.status_code == 302
    llama.refresh_from_db()
    assert llama.price_input_per_mtok == Decimal("0.5") and llama.currency == "EUR"

    for bad in ({"price_input_per_mtok": "cheap"}, {"currency": "EURO"},
                {"display_name": "   "}, {"price_output_per_mtok": "-1"}):
        response = client.post(f"/manage/models/{llama.slug}/", _edit(llama, **bad))
        assert response.status_code == 400, bad
        assert 'class="field-error"' in response.content.decode()
    fresh = ModelConfig.objects.get(pk=llama.pk)
    assert (fresh.price_input_per_mtok, fresh.currency, fresh.display_name) == (
        Decimal("0.5"), "EUR", llama.display_name)


def test_choosing_a_title_model_unchooses_the_other(admin_user: Any) -> None:
    first, second = model("llama-3.2-3b"), model("llama-3-70b")
    client = signed_in(admin_user)
    client.post(f"/manage/models/{first.slug}/", _edit(first, for_titles="on"))
    response = client.post(f"/manage/models/{second.slug}/", _edit(second, for_titles="on"),
                           follow=True)
    assert "now writes conversation titles instead of" in response.content.decode()
    assert list(ModelConfig.objects.filter(for_titles=True)) == [second]


# --- each team's default model ----------------------------------------------------------------
def test_a_members_new_chat_starts_on_the_teams_default_model(
        admin_user: Any, member: Any, outsider: Any) -> None:
    team = Group.objects.create(name="Research")
    member.groups.add(team)
    response = signed_in(admin_user).post("/manage/models/team-defaults/",
                                          {f"team-{team.pk}": "llama-3-70b"})
    assert response.status_code == 302
    assert TeamSettings.objects.get(team=team).default_model == model("llama-3-70b")
    assert _selected(member) == "llama-3-70b"
    assert _selected(outsider) == _switcher(outsider)[0][0]  # no team: the first model
    # The member's own choice wins over the team's.
    UserPreferences.objects.create(user=member, default_model=model("llama-3.2-3b"))
    assert _selected(member) == "llama-3.2-3b"


def test_a_team_default_the_team_cannot_use_is_refused_and_nothing_changes(
        admin_user: Any) -> None:
    research, sales = Group.objects.create(name="Research"), Group.objects.create(name="Sales")
    private = model("llama-3-70b")
    private.groups.add(research)
    response = signed_in(admin_user).post(
        "/manage/models/team-defaults/",
        {f"team-{research.pk}": "llama-3.2-3b", f"team-{sales.pk}": private.slug}, follow=True)
    assert "not available to that team" in response.content.decode()
    assert not TeamSettings.objects.filter(default_model__isnull=False).exists()


def test_the_defaults_form_offers_each_team_only_its_models(admin_user: Any) -> None:
    research, sales = Group.objects.create(name="Research"), Group.objects.create(name="Sales")
    model("llama-3-70b").groups.add(research)
    html = signed_in(admin_user).get(PAGE).content.decode()
    research_select = re.search(rf'name="team-{research.pk}".*?</select>', html, re.S)
    sales_select = re.search(rf'name="team-{sales.pk}".*?</select>', html, re.S)
    assert research_select and sales_select
    assert "llama-3-70b" in research_select.group(0)
    assert "llama-3-70b" not in sales_select.group(0)


@pytest.mark.parametrize(("method", "url"), [
    ("get", PAGE), ("get", "/manage/models/llama-3.2-3b/"),
    ("post", "/manage/models/llama-3.2-3b/"), ("post", "/manage/models/llama-3.2-3b/move/"),
    ("post", "/manage/models/team-defaults/"), ("post", "/manage/models/llama-3.2-3b/enabled/"),
])
def test_only_superusers_reach_the_models_pages(
        owner: Any, client: Client, method: str, url: str) -> None:
    assert getattr(client, method)(url).status_code == 302  # anonymous: to the sign-in page
    owner.is_staff = True
    owner.save()
    orders = list(ModelConfig.objects.values_list("slug", "sort_order", "display_name"))
    assert getattr(signed_in(owner), method)(url, {"direction": "up",
                                                   "display_name": "x"}).status_code == 404
    assert list(ModelConfig.objects.values_list("slug", "sort_order", "display_name")) == orders


def test_every_models_page_post_needs_csrf(admin_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    for url in ("/manage/models/llama-3.2-3b/", "/manage/models/llama-3.2-3b/move/",
                "/manage/models/team-defaults/", "/manage/models/llama-3.2-3b/enabled/"):
        assert client.post(url, {"direction": "up"}).status_code == 403, url
