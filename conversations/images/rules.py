"""Each model's image rules, stated once for the composer and `/v1`.

A rule reads the catalogue row (`vision`, `requires_image`, `max_images`) and the number of
images in each user turn; it refuses with a ServiceError whose code both doors report (`/v1`
under OpenAI's names, api/errors.py). Which image is then sent (the latest one still stored,
exactly one) is answers/history.py's `one_image`.

- A text model takes no images.
- A model that needs an image (DashScope's Llama: the request must carry one) needs one in the
  conversation: in this turn, or stored from an earlier one (follow-ups may be text only).
- No turn carries more images than the model's `max_images`.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings
from django.utils.translation import gettext as _

from conversations.errors import ServiceError
from providers.models import ModelConfig


def per_message_limit(model: ModelConfig) -> int:
    return min(model.max_images or 0, settings.DATA_UPLOAD_MAX_NUMBER_FILES)


def check_image_counts(model: ModelConfig, counts: Sequence[int], *,
                       earlier_image: bool = False, expired_image: bool = False) -> None:
    """Refuse images a model cannot take. `counts`: images per user turn being sent;
    `earlier_image`: the conversation already holds a stored image the model can be sent;
    `expired_image`: it held one, no longer stored."""
    if sum(counts) and not model.vision:
        raise ServiceError("no_images", _("%(model)s does not take images. Remove them or pick "
                                          "a vision model.") % {"model": model.display_name})
    if model.requires_image and not (any(counts) or earlier_image) and expired_image:
        raise ServiceError("image_required", _(
            "%(model)s needs an image in the conversation, and none is stored any more: attach "
            "an image again.") % {"model": model.display_name})
    if model.requires_image and not (any(counts) or earlier_image):
        raise ServiceError("image_required", _("%(model)s needs an image in the conversation: "
                                               "attach one to your message.")
                           % {"model": model.display_name})
    limit = per_message_limit(model)
    if any(count > limit for count in counts):
        raise ServiceError("too_many_images", _("%(model)s takes at most %(n)s image(s) per "
                                                "message.") % {"model": model.display_name,
                                                               "n": limit})
