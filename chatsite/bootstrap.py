"""Creating the first administrator: exactly once, even under concurrent requests.

The guard is a row with a fixed primary key inserted in the same transaction as the user:
two racing requests cannot both insert it, so at most one administrator is created this
way, and never again once the row exists (later administrators come from the admin or
`manage.py createsuperuser`).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from chatsite.models import SiteBootstrap

_done = False  # once true in a process it stays true: users are never "un-bootstrapped"


class AlreadyBootstrapped(Exception):
    pass


def known_bootstrapped() -> bool:
    """True once this process has seen a user: no database query needed any more."""
    return _done


def needs_first_admin() -> bool:
    global _done
    if _done:
        return False
    if SiteBootstrap.objects.exists() or get_user_model().objects.exists():
        _done = True
        return False
    return True


def create_first_admin(username: str, email: str, password: str) -> User:
    global _done
    User = get_user_model()
    try:
        with transaction.atomic():
            if User.objects.exists():
                raise AlreadyBootstrapped
            SiteBootstrap.objects.create(pk=1)
            user = User.objects.create_superuser(username=username, email=email,
                                                 password=password)
    except IntegrityError:
        raise AlreadyBootstrapped from None
    _done = True
    return user


def reset_cache() -> None:
    """For tests that flush the database."""
    global _done
    _done = False
