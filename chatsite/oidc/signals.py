"""What a single sign-on did, for the audit trail (conversations/signals.py records both).

sso_signed_in(request, user, details)   details: issuer, created, linked_by, teams_added/removed
sso_refused(request, reason, details)   reason: a short code (wrong_issuer, bad_signature, ...)
Neither ever carries a token, a code or a secret.
"""

from __future__ import annotations

from django.dispatch import Signal

sso_signed_in = Signal()
sso_refused = Signal()
