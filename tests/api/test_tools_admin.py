"""An administrator decides which models accept tools, in the model catalogue admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from providers.models import ModelConfig
from tests.support import seed_catalogue, signed_in

pytestmark = pytest.mark.django_db


def change_form(model: ModelConfig, **changes: str) -> dict[str, str]:
    data = {
        "display_name": model.display_name, "enabled": "on",
        "sort_order": str(model.sort_order), "context_window": str(model.context_window),
        "max_input_chars": str(model.max_input_chars or ""), "max_images": str(model.max_images),
        "max_image_bytes": str(model.max_image_bytes),
        "max_image_pixels": str(model.max_image_pixels),
        "max_image_side": str(model.max_image_side), "default_params": "{}",
        "price_input_per_mtok": "0", "price_output_per_mtok": "0", "currency": model.currency,
    }
    return {**data, **changes}


def url_of(model: ModelConfig) -> str:
    return f"/admin/providers/modelconfig/{model.pk}/change/"


def test_an_admin_turns_tools_on_for_the_3b_model(admin_user: Any) -> None:
    seed_catalogue()
    model = ModelConfig.objects.get(slug="llama-3.2-3b")
    client = signed_in(admin_user)
    page = client.get(url_of(model)).content.decode()
    assert 'name="supports_tools"' in page
    response = client.post(url_of(model), change_form(model, supports_tools="on"))
    assert response.status_code == 302
    model.refresh_from_db()
    assert model.supports_tools


def test_a_model_whose_client_cannot_send_tools_cannot_be_marked(admin_user: Any) -> None:
    seed_catalogue()
    model = ModelConfig.objects.get(slug="llama-3-70b")
    client: Client = signed_in(admin_user)
    response = client.post(url_of(model), change_form(model, supports_tools="on"))
    assert response.status_code == 200
    assert "only the Cloudflare models" in response.content.decode()
    model.refresh_from_db()
    assert not model.supports_tools
