"""
The database file: its schema, one ``.sql`` file per version in
``schema/`` (package data), how an older file is migrated, and how a
damaged one is moved aside at open.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from importlib import resources

from .records import StoreError

Connect = Callable[[str], sqlite3.Connection]

#: SQLite result codes meaning the file is not a usable database of ours.
_BROKEN = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR", "SQLITE_CANTOPEN")


class _NotOurs(sqlite3.DatabaseError):
    """The file is a damaged database, or someone else's."""


def split_statements(script: str) -> tuple[str, ...]:
    """The statements of an SQL script, each without its ``;``; comment lines dropped."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("--")):
            continue
        pending += line + "\n"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip().removesuffix(";").strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"an SQL statement is not complete: {pending.strip()[:80]!r}")
    return tuple(statements)


def load_migrations() -> tuple[tuple[str, ...], ...]:
    """
    The statements of each schema version, from ``schema/NNNN_*.sql``: file
    N holds what takes the schema from version N - 1 to N.
    """
    files = sorted((f for f in resources.files(__package__).joinpath("schema").iterdir()
                    if f.name.endswith(".sql")), key=lambda f: f.name)
    for number, f in enumerate(files, 1):
        if not f.name.startswith(f"{number:04d}_"):
            raise ValueError(f"schema file {f.name} should be number {number:04d}")
    return tuple(split_statements(f.read_text(encoding="utf-8")) for f in files)


#: One step per schema version: the statements that take the schema from
#: version N to N + 1, run in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = load_migrations()
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def error_name(e: BaseException) -> str:
    return str(getattr(e, "sqlite_errorname", ""))


def _is_broken(e: sqlite3.Error) -> bool:
    return isinstance(e, _NotOurs) or error_name(e).startswith(_BROKEN)


def _use_wal(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() not in ("wal", "memory"):
        raise StoreError(f"the database cannot use write-ahead logging (journal mode {mode})")
    # FULL: a commit is on disk (not just handed to the OS) before it is acknowledged.
    conn.execute("PRAGMA synchronous=FULL")


def _version(conn: sqlite3.Connection) -> int:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        if tables - {"sqlite_sequence"}:
            raise _NotOurs("the file is not a sysadm-dispatch database (tables without a version)")
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        raise _NotOurs("the file is not a sysadm-dispatch database (no schema version)")
    return int(row[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the schema up to date, one version per transaction; returns the version."""
    version = _version(conn)
    if version > len(migrations):
        raise StoreError(f"the database has schema version {version}, newer than this server knows "
                         f"({len(migrations)}); run a newer sysadm-dispatch or move the file away")
    while version < len(migrations):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version == 0:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO schema_version VALUES (0)")
            for statement in migrations[version]:
                conn.execute(statement)
            version += 1
            conn.execute("UPDATE schema_version SET version = ?", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return version


def move_aside(path: str, now: float) -> str:
    """Rename a broken database (and its WAL files) to a timestamped name beside it; returns it."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    target = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.lexists(target):
        n += 1
        target = f"{path}.corrupt-{stamp}-{n}"
    os.replace(path, target)
    for suffix in ("-wal", "-shm", "-journal"):
        if os.path.lexists(path + suffix):
            os.replace(path + suffix, target + suffix)
    return target


def open_database(path: str, now: float, connect: Connect = connect, *,
                  check: bool = True) -> tuple[sqlite3.Connection, str | None]:
    """
    Open (creating or migrating) the database at ``path``.  A corrupt or
    unreadable file is moved aside and a fresh one started; the name it was
    moved to is returned beside the connection.  Raises ``StoreError`` when
    no database can be had (the directory is unusable, another server holds
    the file, the schema is from a newer version).
    """
    moved = None
    for attempt in (1, 2):
        conn = None
        try:
            conn = connect(path)
            # One server per database: a second one would run the same pending jobs.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            # Read-only checks first: a file that is not ours is moved aside unchanged.
            if check:
                result = str(conn.execute("PRAGMA quick_check").fetchone()[0])
                if result != "ok":
                    first = " ".join(result.split())[:160]
                    raise _NotOurs(f"the integrity check failed: {first}")
            _version(conn)
            _use_wal(conn)
            migrate(conn)
            return conn, moved
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            broken = _is_broken(e) and os.path.lexists(path)
            if attempt == 2 or not broken:
                if error_name(e) in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(e):
                    raise StoreError(f"{path} is in use by another process (another server?)") from None
                raise StoreError(f"cannot open {path}: {e}") from None
            moved = move_aside(path, now)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
    raise AssertionError("unreachable")
