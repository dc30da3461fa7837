"""SQLite writers of one process queue on a lock (chatsite/sqlite3/base.py): many threads writing
at once all succeed, and a transaction that fails or a connection that closes lets the next
writer in. Uses its own database file through the backend, whatever the suite's database is."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from chatsite.sqlite3.base import _WRITE_LOCK, DatabaseWrapper


@pytest.fixture(autouse=True)
def _own_database(django_db_blocker: Any) -> Any:
    with django_db_blocker.unblock():  # these connections are to the tests' own files
        yield


def wrapper(path: Path, timeout: float = 5) -> DatabaseWrapper:
    settings: dict[str, Any] = {
        "ENGINE": "chatsite.sqlite3", "NAME": str(path), "USER": "", "PASSWORD": "",
        "HOST": "", "PORT": "", "ATOMIC_REQUESTS": False, "AUTOCOMMIT": True,
        "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": False, "TIME_ZONE": None, "TEST": {},
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": timeout,
                    "init_command": "PRAGMA journal_mode=WAL;"},
    }
    return DatabaseWrapper(settings, alias=f"writers-{path.name}")


def transaction(db: DatabaseWrapper, statements: list[str]) -> None:
    db.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    try:
        with db.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)
        db.commit()
    except Exception:
        db.rollback()
        raise
    finally:
        db.set_autocommit(True)


def test_sixteen_threads_writing_at_once_all_succeed_in_turn(tmp_path: Path) -> None:
    setup = wrapper(tmp_path / "db.sqlite3")
    with setup.cursor() as cursor:
        cursor.execute("CREATE TABLE t (n INTEGER)")
    setup.close()
    failures: list[BaseException] = []

    def writer(index: int) -> None:
        db = wrapper(tmp_path / "db.sqlite3")
        try:
            for _ in range(10):
                transaction(db, [f"INSERT INTO t VALUES ({index})"] * 3)
                with db.cursor() as cursor:  # an autocommit write between transactions
                    cursor.execute(f"UPDATE t SET n = n WHERE n = {index}")
        except BaseException as exc:
            failures.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    check = wrapper(tmp_path / "db.sqlite3")
    with check.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM t")
        assert cursor.fetchone()[0] == 16 * 10 * 3
    check.close()
    assert not _WRITE_LOCK.locked()


def test_a_failed_transaction_and_a_closed_connection_release_the_lock(tmp_path: Path) -> None:
    db = wrapper(tmp_path / "db.sqlite3")
    with pytest.raises(Exception, match="no such table"):
        transaction(db, ["INSERT INTO missing VALUES (1)"])
    assert not _WRITE_LOCK.locked()
    db.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    assert _WRITE_LOCK.locked()
    db.close()
    assert not _WRITE_LOCK.locked()


def test_a_writer_that_waits_past_the_timeout_is_told_the_database_is_locked(
        tmp_path: Path) -> None:
    holder = wrapper(tmp_path / "db.sqlite3")
    holder.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    try:
        waiter = wrapper(tmp_path / "db.sqlite3", timeout=0.2)
        with pytest.raises(Exception, match="database is locked"):
            waiter.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
        waiter.close()
    finally:
        holder.rollback()
        holder.set_autocommit(True)
        holder.close()
    assert not _WRITE_LOCK.locked()
