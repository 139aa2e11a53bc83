"""
The job store's parts on their own: the schema files and how they are read,
the writer's passes (run on the test's thread), and the history pruner as a
timer service.  The store against a real
database and a real thread is tests/integration/test_store.py.
"""

from __future__ import annotations

import sqlite3
from importlib import resources
from typing import Any

import pytest
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

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
from sysadm_dispatch.store.writer import Writer, _Call

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


# The writer's passes, run here on the test's thread.


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


def one_pass(writer: Writer, calls: list[_Call]) -> list[Any]:
    """Run one pass as the writer thread would, and deliver it; each request's result or Failure."""
    writer._delivered(writer._run(calls))
    out: list[Any] = []
    for call in calls:
        call.deferred.addBoth(out.append)
    return out


def test_consecutive_writes_share_one_transaction_and_reads_run_alone() -> None:
    tables, passes = Counted(), []
    writer = Writer(Clock(), tables, observe=passes.append)  # type: ignore[arg-type]
    rows = [(f"j{i}", "{}", 1.0, None, None) for i in range(3)]
    calls = [_Call(tables.open, (0.0,), False), *[_Call(tables.add, ([row],), True) for row in rows],
             _Call(tables.latest, ("j0",), False), _Call(tables.mark, ("j1", 2.0), True)]
    results = one_pass(writer, calls)
    assert len(results) == 6 and not any(isinstance(r, Failure) for r in results)
    assert tables.begun == 2, "the three adds in one transaction, the mark in another"
    assert len(passes) == 1 and len(passes[0][1]) == 2, "one commit time per transaction"


def test_a_failing_write_fails_alone_and_the_others_commit() -> None:
    tables = Counted()
    writer = Writer(Clock(), tables, observe=lambda _: None)  # type: ignore[arg-type]
    one_pass(writer, [_Call(tables.open, (0.0,), False)])
    good, bad = _Call(tables.add, ([("a", "{}", 1.0, None, None)],), True), \
        _Call(tables.add, ([("b", None, 1.0, None, None)],), True)  # spec is NOT NULL
    results = one_pass(writer, [good, bad])
    assert results[0] is None
    assert isinstance(results[1], Failure) and results[1].check(StoreError)
    assert tables.conn is not None
    assert [r[0] for r in tables.conn.execute("SELECT job_id FROM active_jobs")] == ["a"]


def test_a_write_without_a_connection_fails_with_why() -> None:
    tables = Tables(":memory:", connect)
    writer = Writer(Clock(), tables, observe=lambda _: None)  # type: ignore[arg-type]
    [result] = one_pass(writer, [_Call(tables.probe, (), True)])
    assert isinstance(result, Failure) and result.check(StoreError)
    assert "not open" in result.getErrorMessage()


def test_nothing_is_taken_after_the_last_request() -> None:
    tables = Tables(":memory:", connect)
    writer = Writer(Clock(), tables, observe=lambda _: None)  # type: ignore[arg-type]
    writer.submit(tables.close, (), write=False, last=True)
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
