"""`"preset": "<slug>"` through /v1 with the official openai package, against daphne and the
Cloudflare emulator over real sockets."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from django.contrib.auth.models import Group

from conversations.models import Preset, TeamSettings, UsageRecord
from tests.api.conftest import ApiServer, openai_client
from tests.support import model

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def team_preset(emulated: Any, owner: Any, member: Any) -> Preset:
    team = Group.objects.create(name="Linguists")
    owner.groups.add(team)
    member.groups.add(team)
    TeamSettings.objects.create(team=team).managers.add(owner)
    return Preset.objects.create(
        slug="translator", name="Translator", scope=Preset.Scope.TEAM, team=team,
        model=model(), system_prompt="Translate everything into French.",
        params={"temperature": 0.2, "max_tokens": 64})


def _client(api_server: ApiServer, make_token: Any, user: Any) -> openai.OpenAI:
    return openai_client(api_server, make_token(user))


def _model_call(emulated: Any) -> Any:
    calls = [r for r in emulated.requests if r.vendor == "cloudflare" and r.endpoint == "model"]
    assert calls, "no model call reached the emulator"
    return calls[-1]


def test_a_member_applies_a_team_preset_without_naming_a_model(
        api_server: ApiServer, make_token: Any, member: Any, emulated: Any,
        team_preset: Preset) -> None:
    client = _client(api_server, make_token, member)
    reply = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "good morning"}],
        extra_body={"preset": "translator"})
    assert reply.model == "llama-3.2-3b"
    assert reply.choices[0].message.content
    sent = _model_call(emulated).json
    assert sent["messages"][0] == {"role": "system",
                                   "content": "Translate everything into French."}
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 64
    assert UsageRecord.objects.get().model.slug == "llama-3.2-3b"


def test_explicit_request_fields_win_over_the_preset_streaming(
        api_server: ApiServer, make_token: Any, member: Any, emulated: Any,
        team_preset: Preset) -> None:
    client = _client(api_server, make_token, member)
    stream = client.chat.completions.create(
        model="llama-3.2-3b", stream=True, temperature=0.9,
        messages=[{"role": "system", "content": "Answer in German."},
                  {"role": "user", "content": "good night"}],
        extra_body={"preset": "translator"})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    sent = _model_call(emulated).json
    assert sent["messages"][0]["content"] == "Answer in German."
    assert "French" not in json.dumps(sent)
    assert sent["temperature"] == 0.9 and sent["max_tokens"] == 64


def test_an_outsider_gets_preset_not_found_like_an_unknown_slug(
        api_server: ApiServer, make_token: Any, outsider: Any, emulated: Any,
        team_preset: Preset) -> None:
    client = _client(api_server, make_token, outsider)
    bodies = []
    for slug in ("translator", "no-such-preset"):
        with pytest.raises(openai.NotFoundError) as refused:
            client.chat.completions.create(
                model="llama-3.2-3b", messages=[{"role": "user", "content": "hi"}],
                extra_body={"preset": slug})
        body = refused.value.body
        assert isinstance(body, dict) and body["code"] == "preset_not_found"
        assert body["param"] == "preset"
        bodies.append(body["message"].replace(slug, "<slug>"))
    assert bodies[0] == bodies[1]  # nothing tells a hidden preset from a missing one
    assert not [r for r in emulated.requests if r.endpoint == "model"]
    assert not UsageRecord.objects.exists()


def test_a_preset_that_is_not_a_string_is_a_clear_400(
        api_server: ApiServer, make_token: Any, member: Any, emulated: Any) -> None:
    client = _client(api_server, make_token, member)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="llama-3.2-3b", messages=[{"role": "user", "content": "hi"}],
            extra_body={"preset": {"slug": "translator"}})
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "preset"


def test_models_does_not_list_presets(api_server: ApiServer, make_token: Any, member: Any,
                                      emulated: Any, team_preset: Preset) -> None:
    ids = [m.id for m in _client(api_server, make_token, member).models.list()]
    assert "translator" not in ids and "llama-3.2-3b" in ids


def test_a_preset_whose_model_the_user_may_not_use_is_model_not_found(
        api_server: ApiServer, make_token: Any, owner: Any, member: Any, emulated: Any,
        team_preset: Preset) -> None:
    testers = Group.objects.create(name="Model testers")
    owner.groups.add(testers)
    team_preset.model.groups.add(testers)
    client = _client(api_server, make_token, member)
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"preset": "translator"})
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "model_not_found"
    assert not UsageRecord.objects.exists()
