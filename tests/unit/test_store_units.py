"""
The job store's parts on their own: the schema files and how they are read,
the writer's passes (on a ``Clock`` with a thread pool that runs the work at
once), and the history pruner as a timer service.  The store against a real
database and a real thread is tests/integration/test_store.py.
"""

from __future__ import annotations

import sqlite3
from importlib import resources
from typing import Any

import pytest
from security_helpers import SyncClock, SyncPool
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from sysadm_dispatch.store.migrations import (
    MIGRATIONS,
    SCHEMA_VERSION,
    connect,
    load_migrations,
    migrate,
    split_statements,
)
from sysadm_dispatch.store.records import StoreError
from sysadm_dispatch.store.retention import HistoryPruner
from sysadm_dispatch.store.tables import Tables
from sysadm_dispatch.store.writer import PassResult, Writer

# The schema files.


def test_split_statements_drops_comments_and_keeps_multi_line_statements() -> None:
    script = "-- a comment; with a semicolon\n\nCREATE TABLE t (\n  a TEXT -- why ; here\n);\n\nDROP TABLE t;\n"
    assert split_statements(script) == ("CREATE TABLE t (\n  a TEXT -- why ; here\n)", "DROP TABLE t")


def test_an_incomplete_statement_is_an_error() -> None:
    with pytest.raises(ValueError, match="not complete"):
        split_statements("CREATE TABLE t (a TEXT);\nCREATE TABLE u (b TEXT)\n")


def test_the_schema_is_read_from_the_package_files_one_version_each() -> None:
    files = sorted(f.name for f in resources.files("sysadm_dispatch.store").joinpath("schema").iterdir()
                   if f.name.endswith(".sql"))
    assert files == ["0001_jobs_and_history.sql", "0002_who.sql"]
    assert load_migrations() == MIGRATIONS
    assert SCHEMA_VERSION == len(files) == 2
    assert MIGRATIONS[0][0].startswith("CREATE TABLE active_jobs")
    assert MIGRATIONS[1] == ("ALTER TABLE active_jobs ADD COLUMN submitted_by TEXT",
                             "ALTER TABLE history ADD COLUMN submitted_by TEXT",
                             "ALTER TABLE history ADD COLUMN killed_by TEXT")


def test_the_files_make_the_tables_the_store_writes() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(conn) == SCHEMA_VERSION
    columns = {table: [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
               for table in ("active_jobs", "history")}
    assert columns == {
        "active_jobs": ["seq", "job_id", "spec", "time_queued", "time_started", "submitted_by"],
        "history": ["seq", "job_id", "time_finished", "record", "submitted_by", "killed_by"],
    }
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"history_by_time", "history_by_job"} <= indexes


# The writer, on a Clock whose "thread pool" runs each pass at once.


class Counted(Tables):
    """Tables that count the transactions the writer opens on them."""

    def __init__(self) -> None:
        super().__init__(":memory:", connect)
        self.begun = 0

    def open(self, now: float) -> Any:
        opened = super().open(now)
        assert self.conn is not None
        real = self.conn

        class Conn:
            def __getattr__(_, name: str) -> Any:
                return getattr(real, name)

            def execute(_, sql: str, *args: Any) -> Any:
                if sql == "BEGIN IMMEDIATE":
                    self.begun += 1
                return real.execute(sql, *args)

        self.conn = Conn()  # type: ignore[assignment]
        return opened


def sync_writer(tables: Tables, passes: list[PassResult]) -> tuple[Writer, SyncPool]:
    writer = Writer(SyncClock(), tables, observe=passes.append)
    pool = SyncPool()
    writer.pool = pool  # type: ignore[assignment]
    return writer, pool


def test_consecutive_writes_share_one_transaction_and_reads_run_alone() -> None:
    tables, passes = Counted(), []
    writer, pool = sync_writer(tables, passes)
    writer._passing = True  # hold the passes: requests wait together, as behind a slow commit
    opened = writer.submit(tables.open, (0.0,), write=False)
    rows = [(f"j{i}", "{}", 1.0, None, None) for i in range(3)]
    adds = [writer.submit(tables.add, ([row],), write=True) for row in rows]
    read = writer.submit(tables.latest, ("j0",), write=False)
    last = writer.submit(tables.mark, ("j1", 2.0), write=True)
    writer._passing = False
    writer._next_pass()
    assert pool.calls == 1
    assert [d.called for d in (opened, *adds, read, last)] == [True] * 6
    assert tables.begun == 2, "the three adds in one transaction, the mark in another"
    assert len(passes[0][1]) == 2, "one commit time per transaction"


def test_a_failing_write_fails_alone_and_the_others_commit() -> None:
    tables, passes = Counted(), []
    writer, _ = sync_writer(tables, passes)
    writer.submit(tables.open, (0.0,), write=False)
    writer._passing = True
    good = writer.submit(tables.add, ([("a", "{}", 1.0, None, None)],), write=True)
    bad = writer.submit(tables.add, ([("b", None, 1.0, None, None)],), write=True)  # spec NOT NULL
    writer._passing = False
    writer._next_pass()
    assert good.result is None
    bad.addErrback(lambda f: f.trap(StoreError) and None)
    assert tables.conn is not None
    assert [r[0] for r in tables.conn.execute("SELECT job_id FROM active_jobs")] == ["a"]


def test_a_write_without_a_connection_fails_with_why() -> None:
    tables, passes = Tables(":memory:", connect), []
    writer, _ = sync_writer(tables, passes)
    failures: list[Any] = []
    writer.submit(tables.probe, (), write=True).addErrback(failures.append)
    assert failures[0].check(StoreError) and "not open" in failures[0].getErrorMessage()


def test_after_the_last_request_the_pool_stops_and_takes_no_more() -> None:
    tables, passes = Tables(":memory:", connect), []
    writer, _ = sync_writer(tables, passes)
    stopped: list[bool] = []
    writer.pool.stop = lambda: stopped.append(True)  # type: ignore[method-assign]
    writer.submit(tables.open, (0.0,), write=False)
    writer.submit(tables.close, (), write=False, last=True)
    assert stopped == [True]
    with pytest.raises(RuntimeError, match="stopped"):
        writer.submit(tables.probe, (), write=True)


# The pruner is a timer service.


class SlowStore:
    """Prunes in chunks that end when the test says so."""

    def __init__(self) -> None:
        self.chunks: list[Deferred[int]] = []

    def prune(self, before: float, keep: int, chunk: int = 2000) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.chunks.append(d)
        return d


def test_the_pruner_is_a_timer_service_whose_stop_waits_for_the_chunk_under_way() -> None:
    clock, store = Clock(), SlowStore()
    pruner = HistoryPruner(store, clock, days=1, max_jobs=10, interval=60)
    assert isinstance(pruner, TimerService)
    pruner.startService()
    assert len(store.chunks) == 1
    stopped = pruner.stopService()
    assert not stopped.called, "a chunk is being deleted"
    store.chunks[0].callback(500)  # more might follow, but the pruner is stopping
    assert stopped.called and len(store.chunks) == 1
    clock.advance(600)
    assert len(store.chunks) == 1, "a stopped pruner prunes no more"
    assert not pruner.running


def test_the_pruner_restarts() -> None:
    clock, calls = Clock(), []

    class Counting:
        def prune(self, before: float, keep: int, chunk: int = 2000) -> Deferred[int]:
            calls.append(before)
            return succeed(0)

    pruner = HistoryPruner(Counting(), clock, days=1, max_jobs=10, interval=60)
    pruner.startService()
    pruner.stopService()
    clock.advance(100)
    pruner.startService()
    assert calls == [-86400.0, 100 - 86400.0]
    pruner.stopService()
