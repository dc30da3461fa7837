"""Django's database sessions, with the read every signed-in request makes compiled once.

The store is Django's own (`django.contrib.sessions.backends.db`): the same table, cookie,
signing and expiry. Only its lookup of the session row, which Django would build and compile
in Python on every request, is a `Compiled` read (chatsite/compiled.py; issue 16).
"""

from __future__ import annotations

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.contrib.sessions.models import Session
from django.utils import timezone

from chatsite.compiled import Compiled

_SESSION = Compiled(
    lambda key, now: Session.objects.filter(session_key=key, expire_date__gt=now),
    key=Session._meta.get_field("session_key"), now=Session._meta.get_field("expire_date"))


class SessionStore(DatabaseSessionStore):
    def _get_session_from_db(self) -> Session | None:
        # As Django's: an unknown or expired key reads as no session and is forgotten.
        key = self.session_key
        found = _SESSION.first(key=key, now=timezone.now()) if key is not None else None
        if found is None:
            self._session_key = None
        return found
