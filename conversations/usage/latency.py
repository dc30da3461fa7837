"""Time to first token per provider, from the ledger (UsageRecord.ttft_ms).

The providers page shows each provider's median over the last day: the ledger is the one place
every answer (web page, `/v1`, titles) writes its timings, so the figure is what users waited.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from statistics import median

from django.utils import timezone

from conversations.models import UsageRecord

WINDOW = timedelta(days=1)
# A busy day holds many answers; the median of the latest this many per provider is plenty.
MAX_SAMPLES = 5000


def median_ttft_by_provider(now: datetime | None = None) -> dict[int, int]:
    """provider id -> median time to first token (ms) of the answers of the last day."""
    since = (now or timezone.now()) - WINDOW
    samples: dict[int, list[int]] = {}
    rows = (UsageRecord.objects.filter(started_at__gte=since, ttft_ms__isnull=False)
            .order_by("-started_at").values_list("model__provider_id", "ttft_ms"))
    for provider_id, ttft in rows.iterator():
        values = samples.setdefault(provider_id, [])
        if ttft is not None and len(values) < MAX_SAMPLES:
            values.append(ttft)
    return {pk: round(median(values)) for pk, values in samples.items() if values}
