"""The catalogue, stated once: the vendors' base URLs, the three accounts, the four Llama models.

Everything else derives from here: the rows `sync_providers` and the data migration seed
(an admin may then change them), which client serves which model id (`MODEL_PROVIDER`), and the
parameter specs keyed by model id (params.py). Nothing here imports the rest of the product.
Prices are the vendors' list prices where docs/providers.md gives them; others start at 0 for
the admin to set. (The emulators keep their own list of what each vendor serves: they stand
for the vendors, not for us.)
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

CF_TEXT_MODEL = "@cf/meta/llama-3.2-3b-instruct"
CF_VISION_MODEL = "@cf/meta/llama-3.2-11b-vision-instruct"
DASHSCOPE_MODEL = "llama3.2-90b-vision-instruct"
QIANFAN_MODEL = "llama_3_70b"

# The vendors' official base URLs (providers.md). Threat T10: an admin form should only accept
# these hosts for real traffic; emulator/test URLs are the deployment's explicit choice.
OFFICIAL_BASE_URLS: dict[str, tuple[str, ...]] = {
    "cloudflare": ("https://api.cloudflare.com/client/v4",),
    "dashscope": (
        "https://dashscope.aliyuncs.com/api/v1",
        "https://dashscope-intl.aliyuncs.com/api/v1",
    ),
    "qianfan": ("https://aip.baidubce.com",),
}

# Each account starts on its vendor's first official base URL (the allow-list's own data).
PROVIDERS: list[dict[str, Any]] = [
    {"kind": "cloudflare", "name": "Cloudflare Workers AI",
     "base_url": OFFICIAL_BASE_URLS["cloudflare"][0]},
    {"kind": "dashscope", "name": "Alibaba DashScope",
     "base_url": OFFICIAL_BASE_URLS["dashscope"][0], "options": {"image_transport": "url"}},
    {"kind": "qianfan", "name": "Baidu Qianfan", "base_url": OFFICIAL_BASE_URLS["qianfan"][0]},
]

# Llama 3.2 Vision works on 560 px tiles, at most 2x2: larger images only cost bytes.
_VISION_SIDE = 1120

MODELS: list[dict[str, Any]] = [
    {"slug": "llama-3.2-3b", "provider": "cloudflare", "model_id": CF_TEXT_MODEL,
     "display_name": "Llama 3.2 3B Instruct", "vision": False, "requires_image": False,
     "context_window": 128000, "max_input_chars": 131072, "max_images": 0,
     "default_params": {"max_tokens": 1024}, "price_input_per_mtok": Decimal("0.051"),
     "price_output_per_mtok": Decimal("0.335"), "currency": "USD", "sort_order": 10,
     "supports_tools": True},
    {"slug": "llama-3.2-11b-vision", "provider": "cloudflare",
     "model_id": CF_VISION_MODEL,
     "display_name": "Llama 3.2 11B Vision Instruct", "vision": True, "requires_image": False,
     "context_window": 128000, "max_input_chars": 131072, "max_images": 1,
     # The image travels as a JSON int array (3-4 bytes per byte): keep it small.
     "max_image_bytes": 2 * 1024 * 1024, "max_image_side": _VISION_SIDE,
     "default_params": {"max_tokens": 1024}, "price_input_per_mtok": Decimal("0.049"),
     "price_output_per_mtok": Decimal("0.68"), "currency": "USD", "sort_order": 20,
     "supports_tools": True},
    {"slug": "llama-3.2-90b-vision", "provider": "dashscope",
     "model_id": DASHSCOPE_MODEL, "display_name": "Llama 3.2 90B Vision Instruct",
     "vision": True, "requires_image": True, "context_window": 8192, "max_input_chars": None,
     "max_images": 1, "max_image_bytes": 10 * 1024 * 1024, "max_image_side": _VISION_SIDE,
     "default_params": {"max_tokens": 1024}, "price_input_per_mtok": Decimal(0),
     "price_output_per_mtok": Decimal(0), "currency": "CNY", "sort_order": 30},
    {"slug": "llama-3-70b", "provider": "qianfan", "model_id": QIANFAN_MODEL,
     "display_name": "Meta-Llama-3-70B-Instruct", "vision": False, "requires_image": False,
     "context_window": 8192, "max_input_chars": 4800, "max_images": 0,
     "default_params": {}, "price_input_per_mtok": Decimal(0),
     "price_output_per_mtok": Decimal(0), "currency": "CNY", "sort_order": 40},
]

# The clients that translate tools (`ChatRequest.tools`) to their vendor: a model answers tool
# calls only when its row says `supports_tools` and its provider is one of these. Both
# Cloudflare models' schemas take `tools` and answer `tool_calls` (docs/providers.md).
TOOL_KINDS = frozenset({"cloudflare"})


def context_window(model_id: str) -> int:
    """The catalogue's context window of a model id, in tokens (input plus output)."""
    return next(int(spec["context_window"]) for spec in MODELS if spec["model_id"] == model_id)


# Which client serves which model id (every client checks a request against it).
MODEL_PROVIDER: dict[str, str] = {spec["model_id"]: spec["provider"] for spec in MODELS}


def seed(provider_model: Any, model_config_model: Any) -> None:
    """Create missing rows; never overwrite what an admin changed."""
    by_kind = {}
    for spec in PROVIDERS:
        row, _created = provider_model.objects.get_or_create(
            kind=spec["kind"],
            defaults={"name": spec["name"], "base_url": spec["base_url"],
                      "options": spec.get("options", {})},
        )
        by_kind[spec["kind"]] = row
    # A data migration runs this with the historical model: fields added later are left out.
    known = {f.name for f in model_config_model._meta.get_fields()}
    for spec in MODELS:
        values = {k: v for k, v in spec.items() if k not in {"slug", "provider"} and k in known}
        model_config_model.objects.get_or_create(
            slug=spec["slug"], defaults={**values, "provider": by_kind[spec["provider"]]}
        )
