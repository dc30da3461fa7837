"""Each model's image rules, stated once for the composer and `/v1`.

A rule reads the catalogue row (`vision`, `requires_image`, `max_images`) and the number of
images in each user turn that is being sent; it refuses with a ServiceError whose code both
doors report (`/v1` under OpenAI's names, api/views.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings
from django.utils.translation import gettext as _

from conversations.errors import ServiceError
from providers.models import ModelConfig


def per_message_limit(model: ModelConfig) -> int:
    return min(model.max_images or 0, settings.DATA_UPLOAD_MAX_NUMBER_FILES)


def check_image_counts(model: ModelConfig, counts: Sequence[int]) -> None:
    """Refuse images a model cannot take. `counts`: images per user turn being sent."""
    if sum(counts) and not model.vision:
        raise ServiceError("no_images", _("%(model)s does not take images. Remove them or pick "
                                          "a vision model.") % {"model": model.display_name})
    if model.requires_image and not all(counts):
        raise ServiceError("image_required", _("%(model)s needs an image in every message.")
                           % {"model": model.display_name})
    limit = per_message_limit(model)
    if any(count > limit for count in counts):
        raise ServiceError("too_many_images", _("%(model)s takes at most %(n)s image(s) per "
                                                "message.") % {"model": model.display_name,
                                                               "n": limit})
