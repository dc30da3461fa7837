"""Django's SQLite backend, with the write transactions of one process queued on a lock.

SQLite admits one writer at a time. A connection that finds the write lock taken retries on
SQLite's busy handler, which sleeps 1, 2, 5, 10 ... up to 100 ms between tries however soon the
lock is free: with 64 messages posted within a second, POSTs waited 0.7-1.3 s in those sleeps
while the app's core sat 40 % idle (issue 16, `make bench`'s burst row). Writers of one process
now wait on a Python lock instead, which hands over the moment it is released; SQLite's own
lock and busy timeout still arbitrate between processes (tests start several).

Transactions (`BEGIN IMMEDIATE`, see settings: every atomic block) hold the lock from BEGIN
to COMMIT or ROLLBACK; a single autocommit write (an answer's claim or partial save) holds it for
its one statement. A writer that cannot get the lock within the busy timeout fails with
"database is locked", as SQLite would.
"""

from __future__ import annotations

import threading
from typing import Any

from django.db.backends.sqlite3 import base
from django.db.utils import OperationalError

_WRITE_LOCK = threading.Lock()
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_lock = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute_wrappers.append(self._queue_autocommit_write)

    def _acquire_write_lock(self) -> None:
        """Wait as long as SQLite's busy timeout would, then fail as SQLite would."""
        timeout = float(self.settings_dict.get("OPTIONS", {}).get("timeout", 5))
        if not _WRITE_LOCK.acquire(timeout=timeout):
            raise OperationalError("database is locked")

    def _queue_autocommit_write(self, execute: Any, sql: str, params: Any, many: bool,
                                context: Any) -> Any:
        if self._holds_write_lock or self.in_atomic_block or not sql.lstrip()[:7].upper(
                ).startswith(_WRITES):
            return execute(sql, params, many, context)
        self._acquire_write_lock()
        try:
            return execute(sql, params, many, context)
        finally:
            _WRITE_LOCK.release()

    def _start_transaction_under_autocommit(self) -> None:
        self._acquire_write_lock()
        self._holds_write_lock = True
        try:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]  # not in stubs
        except BaseException:
            self._release_write_lock()
            raise

    def _release_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            _WRITE_LOCK.release()

    def _commit(self) -> Any:
        try:
            return super()._commit()  # type: ignore[misc]
        finally:
            self._release_write_lock()

    def _rollback(self) -> Any:
        try:
            return super()._rollback()  # type: ignore[misc]
        finally:
            self._release_write_lock()

    def _close(self) -> Any:
        try:
            return super()._close()  # type: ignore[misc]
        finally:
            self._release_write_lock()
