"""
The job store (``sysadm_dispatch.store``) and the dispatcher's use of it:
durable acceptance, recovery after a restart, graceful stop, history,
retention, schema versions, corrupt files and a full disk.

The store runs SQLite on a thread of its own, so these tests run on the real
reactor; the dispatcher ones run real (short) processes.  A full disk is
simulated here with a connection whose commits fail as SQLite's do; the
real thing, on a tiny tmpfs, is in test_logs.py.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from conftest import poll, with_timeout
from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from sysadm_dispatch import Dispatcher, HistoryPruner, Store, Unavailable
from sysadm_dispatch.core import kills as kills_module
from sysadm_dispatch.core import scheduler as scheduler_module
from sysadm_dispatch.core.spec import DEFAULT_QUEUES, InvalidJob, JobSpec, specs_from_run_args
from sysadm_dispatch.store import database as store_module
from sysadm_dispatch.store.migrations import MIGRATIONS, SCHEMA_VERSION, migrate, open_database
from sysadm_dispatch.store.records import StoreError

ensure = pytest_twisted.ensureDeferred


@pytest.fixture
def path(tmp_path: Any) -> str:
    return str(tmp_path / "dispatch.sqlite3")


def spec(job_id: str, commands: Any = "true", queue: str = "no_queue", **extra: Any) -> JobSpec:
    [s] = specs_from_run_args({"jobs": [{"id": job_id, "commands": commands, "queue": queue, **extra}]},
                              DEFAULT_QUEUES)
    return s


def record(job_id: str, **extra: Any) -> dict[str, Any]:
    return {"state": "finished", "process_id": job_id, "process_details": {"process_id": job_id}, **extra}


def faulty(state: dict[str, Any]) -> Callable[[str], sqlite3.Connection]:
    """
    Connections that count commits and, while ``state["full"]`` is set, fail
    them as SQLite does on a full disk; ``state["gate"]`` (an Event) holds
    each commit until it is set.
    """

    class Connection(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql == "COMMIT":
                state["commits"] = state.get("commits", 0) + 1
                gate = state.get("gate")
                if gate is not None:
                    gate.wait(20)
                if state.get("full"):
                    raise sqlite3.OperationalError("database or disk is full")
            return super().execute(sql, *args)

    return lambda p: sqlite3.connect(p, isolation_level=None, timeout=0.2, factory=Connection)


async def open_store(path: str, **kwargs: Any) -> tuple[Store, Any]:
    store = Store(path, reactor, **kwargs)
    opened = await with_timeout(store.open())
    return store, opened


# The store itself.


@ensure
async def test_active_jobs_and_history_survive_reopening(path: str) -> None:
    store, opened = await open_store(path)
    assert opened.jobs == [] and opened.moved_aside is None
    a = spec("a", ["echo 'one two'", "true"], "pkg_queue", cwd="/tmp", env={"LANG": "C"}, timeout=60)
    await store.add([(a, 10.0, None), (spec("b"), 11.0, 11.0)])
    await store.add([(spec("c", queue="pkg_queue"), 12.0, None)])
    await store.mark_started("a", 13.0)
    await store.finish(record("b", success="true"), 14.0)
    await store.close()

    store, opened = await open_store(path)
    assert [(JobSpec(**j.spec_fields), j.time_queued, j.time_started) for j in opened.jobs] == [
        (a, 10.0, 13.0), (spec("c", queue="pkg_queue"), 12.0, None)]
    assert opened.jobs[0].spec_fields["argvs"] == (("echo", "one two"), ("true",))
    assert await store.latest("b") == record("b", success="true")
    assert await store.latest("a") is None
    await store.close()


@ensure
async def test_the_connection_is_durable_write_ahead_logged_and_exclusive(path: str) -> None:
    # What docs/persistence.rst promises of the store's own connection: WAL,
    # and a commit acknowledged only once on disk (synchronous=FULL).
    store, _ = await open_store(path)

    def pragmas() -> tuple[Any, ...]:
        assert store._tables.conn is not None
        return tuple(store._tables.conn.execute(f"PRAGMA {name}").fetchone()[0]
                     for name in ("journal_mode", "synchronous", "locking_mode"))

    journal, synchronous, locking = await with_timeout(store._submit(pragmas, (), write=False))
    assert (journal, synchronous, locking) == ("wal", 2, "exclusive")  # 2: FULL
    await store.close()


@ensure
async def test_requests_waiting_together_share_one_commit(path: str) -> None:
    state: dict[str, Any] = {}
    store, _ = await open_store(path, connect=faulty(state))
    before = state.get("commits", 0)
    fired: list[int] = []
    ds = [store.add([(spec(f"j{i}"), float(i), None)]).addCallback(lambda _, i=i: fired.append(i))
          for i in range(200)]
    for d in ds:
        await with_timeout(d)
    assert fired == list(range(200))
    assert state["commits"] - before < 20
    await store.close()
    store, opened = await open_store(path)
    assert [j.spec_fields["id"] for j in opened.jobs] == [f"j{i}" for i in range(200)]
    await store.close()


@ensure
async def test_finished_records_share_one_commit_within_the_delay(path: str) -> None:
    state: dict[str, Any] = {}
    store, _ = await open_store(path, connect=faulty(state))
    await store.add([(spec(f"f{i}"), float(i), float(i)) for i in range(50)])
    before = state["commits"]
    started = reactor.seconds()
    ds = [store.finish(record(f"f{i}", success="true"), 100.0 + i) for i in range(50)]
    for d in ds:
        await with_timeout(d)
    # Nothing else asked for a write or a read: they waited for the delay, then one commit.
    assert store_module.FINISH_DELAY == 0.05  # as docs/persistence.rst says
    assert reactor.seconds() - started >= store_module.FINISH_DELAY * 0.9
    assert state["commits"] - before == 1
    await store.close()
    store, opened = await open_store(path)
    assert opened.jobs == []
    assert await store.latest("f49") == record("f49", success="true")
    await store.close()


@ensure
async def test_a_bad_finished_record_does_not_fail_the_others_written_with_it(path: str) -> None:
    store, _ = await open_store(path)
    await store.add([(spec(f"g{i}"), 1.0, 1.0) for i in range(3)])
    good = [store.finish(record(f"g{i}", success="true"), 2.0) for i in (0, 2)]
    bad = store.finish(record("g1", oops={1, 2}), 2.0)  # not JSON: a bug, not a store error
    for d in good:
        await with_timeout(d)
    with pytest.raises(TypeError):
        await with_timeout(bad)
    assert await store.latest("g0") == record("g0", success="true")
    assert await store.latest("g2") == record("g2", success="true")
    await store.close()


@ensure
async def test_waiting_finished_records_are_written_before_a_read_or_the_same_id(path: str) -> None:
    store, _ = await open_store(path)
    await store.add([(spec("x"), 1.0, 1.0), (spec("y"), 1.0, 1.0)])
    store.finish(record("x", success="true"), 2.0)
    # A read right away sees the record (it is written first).
    page, truncated = await with_timeout(store.history(0.0, 10.0, 10))
    assert [r["process_id"] for _, r in page] == ["x"] and not truncated
    # A new job with the id of one whose end waits: the end is written
    # first, so it cannot delete the new job's row.
    store.finish(record("y", success="true"), 3.0)
    await with_timeout(store.add([(spec("y", "echo again"), 4.0, None)]))
    await store.close()
    store, opened = await open_store(path)
    assert [(j.spec_fields["id"], j.spec_fields["commands"]) for j in opened.jobs] == [("y", ("echo again",))]
    assert await store.latest("y") == record("y", success="true")
    await store.close()


@ensure
async def test_closing_writes_the_waiting_finished_records(path: str) -> None:
    store, _ = await open_store(path)
    await store.add([(spec("z"), 1.0, 1.0)])
    d = store.finish(record("z", success="false"), 2.0)
    await with_timeout(store.close())
    assert d.called
    store, opened = await open_store(path)
    assert opened.jobs == []
    assert await store.latest("z") == record("z", success="false")
    await store.close()


@ensure
async def test_the_writer_thread_runs_from_open_to_close_and_then_is_gone(path: str) -> None:
    def writers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == f"store {path}"]

    store = Store(path, reactor)
    assert writers() == []
    await with_timeout(store.open())
    [thread] = writers()
    assert thread.daemon, "a store never closed does not hold the process at exit"
    queued = [store.add([(spec(f"q{i}"), float(i), None)]) for i in range(50)]
    reads = [store.latest(f"q{i}") for i in range(50)]
    await with_timeout(store.close())
    assert all(d.called for d in queued + reads), "close finishes every request queued before it"
    await poll(lambda: not thread.is_alive())
    assert writers() == []
    with pytest.raises(StoreError, match="closed"):
        await store.probe()


@ensure
async def test_one_bad_request_does_not_fail_the_others_in_its_commit(path: str) -> None:
    store, _ = await open_store(path)
    good = store.add([(spec("good"), 1.0, None)])
    bad = store.finish(record("bad", oops={1, 2}), 2.0)  # not JSON: a bug, not a store error
    after = store.add([(spec("after"), 3.0, None)])
    await with_timeout(good)
    with pytest.raises(TypeError):
        await with_timeout(bad)
    await with_timeout(after)
    await store.close()
    store, opened = await open_store(path)
    assert [j.spec_fields["id"] for j in opened.jobs] == ["good", "after"]
    await store.close()


@ensure
async def test_a_full_disk_fails_the_write_and_the_store_carries_on(path: str) -> None:
    state: dict[str, Any] = {}
    store, _ = await open_store(path, connect=faulty(state))
    state["full"] = True
    with pytest.raises(StoreError, match="disk is full"):
        await with_timeout(store.add([(spec("lost"), 1.0, None)]))
    state["full"] = False
    await with_timeout(store.add([(spec("kept"), 2.0, None)]))
    await store.close()
    store, opened = await open_store(path)
    assert [j.spec_fields["id"] for j in opened.jobs] == ["kept"]
    await store.close()


@ensure
async def test_history_window_order_limit_and_latest(path: str) -> None:
    store, _ = await open_store(path)
    for i, t in enumerate([100.0, 200.0, 200.0, 300.0, 400.0]):
        await store.finish(record(f"j{i}"), t)
    await store.finish(record("j1", again=True), 250.0)
    rows, truncated = await store.history(150.0, 350.0, 10)
    assert [(t, r["process_id"]) for t, r in rows] == [(300.0, "j3"), (250.0, "j1"), (200.0, "j2"), (200.0, "j1")]
    assert truncated is False
    rows, truncated = await store.history(0.0, 1000.0, 2)
    assert [r["process_id"] for _, r in rows] == ["j4", "j3"] and truncated is True
    assert (await store.latest("j1"))["again"] is True
    await store.close()


@ensure
async def test_pruning_by_age_and_by_count_in_chunks(path: str) -> None:
    store, _ = await open_store(path)
    for i in range(10):
        await store.finish(record(f"j{i}"), float(i))
    assert await store.prune(before=3.0, keep=100, chunk=2) == 2
    assert await store.prune(before=3.0, keep=100, chunk=2) == 1
    assert await store.prune(before=3.0, keep=100, chunk=2) == 0
    assert await store.prune(before=0.0, keep=4, chunk=100) == 3
    rows, _ = await store.history(0.0, 100.0, 100)
    assert [r["process_id"] for _, r in rows] == ["j9", "j8", "j7", "j6"]
    await store.close()


@ensure
async def test_pruner_runs_at_start_and_then_on_its_clock(path: str) -> None:
    store, _ = await open_store(path)
    day = 86400.0
    for i in range(6):
        await store.finish(record(f"j{i}"), i * day)
    clock = Clock()
    clock.advance(7 * day)
    pruner = HistoryPruner(store, clock, days=5, max_jobs=1000, interval=day)
    pruner.startService()
    await poll(lambda: pruner._running is None)
    rows, _ = await store.history(0.0, 100 * day, 100)
    assert [r["process_id"] for _, r in rows] == ["j5", "j4", "j3", "j2"]
    clock.advance(day)  # now 8 days: j2 is older than 5 days
    await poll(lambda: pruner._running is None)
    rows, _ = await store.history(0.0, 100 * day, 100)
    assert [r["process_id"] for _, r in rows] == ["j5", "j4", "j3"]
    pruner.max_jobs = 1
    clock.advance(day)
    await poll(lambda: pruner._running is None)
    rows, _ = await store.history(0.0, 100 * day, 100)
    assert [r["process_id"] for _, r in rows] == ["j5"]
    await with_timeout(pruner.stopService())
    await store.close()


def test_the_pruner_runs_hourly_by_default() -> None:
    # README.rst: "pruned at start and hourly"; the server builds its pruner
    # without an interval of its own.
    calls: list[float] = []
    clock = Clock()

    class CountingStore:
        def prune(self, before: float, keep: int) -> Any:
            calls.append(clock.seconds())
            return succeed(0)

    pruner = HistoryPruner(CountingStore(), clock, days=30, max_jobs=1000)  # type: ignore[arg-type]
    pruner.startService()
    assert calls == [0.0]
    clock.advance(3599)
    assert calls == [0.0]
    clock.advance(1)
    assert calls == [0.0, 3600.0]
    clock.advance(3600)
    assert calls == [0.0, 3600.0, 7200.0]
    pruner.stopService()


# Schema versions, corrupt files, a second server.


def test_schema_is_versioned_and_migrated_one_step_at_a_time(path: str) -> None:
    conn, _ = open_database(path, 0.0)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.execute("INSERT INTO history (job_id, time_finished, record) VALUES ('old', 1, '{}')")
    # A later version adds a step; the data of the earlier version is kept.
    step = ("ALTER TABLE history ADD COLUMN note TEXT", "UPDATE history SET note = 'migrated'")
    assert migrate(conn, (*MIGRATIONS, step)) == SCHEMA_VERSION + 1
    assert conn.execute("SELECT job_id, note FROM history").fetchall() == [("old", "migrated")]
    conn.close()
    # This version does not know schema 2: it refuses rather than guess.
    with pytest.raises(StoreError, match="newer than this server knows"):
        open_database(path, 0.0)
    assert os.path.exists(path), "a newer database must not be moved aside"


def test_a_failed_migration_step_changes_nothing(path: str) -> None:
    conn, _ = open_database(path, 0.0)
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, (*MIGRATIONS, ("CREATE TABLE extra (x)", "THIS IS NOT SQL")))
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchall() == []
    conn.close()


def moved_files(path: str) -> list[str]:
    folder, name = os.path.split(path)
    return sorted(f for f in os.listdir(folder) if f.startswith(name + ".corrupt-"))


@pytest.mark.parametrize("damage", ["garbage", "pages", "foreign"])
def test_a_corrupt_file_is_moved_aside_and_a_fresh_one_started(path: str, damage: str) -> None:
    if damage == "garbage":
        with open(path, "wb") as f:
            f.write(b"this is not a database\n" * 200)
    elif damage == "foreign":
        other = sqlite3.connect(path)
        other.execute("CREATE TABLE mine (x)")
        other.commit()
        other.close()
    else:
        conn, _ = open_database(path, 0.0)
        conn.execute("BEGIN")
        for i in range(2000):
            conn.execute("INSERT INTO history (job_id, time_finished, record) VALUES (?, ?, ?)",
                         (f"j{i}", i, "x" * 200))
        conn.execute("COMMIT")
        conn.close()
        with open(path, "r+b") as f:
            f.seek(4096 * 5)
            f.write(b"\xa5" * 4096 * 3)
    with open(path, "rb") as f:
        damaged = f.read()
    store = Store(path, reactor)
    moved = store.prepare()
    assert moved is not None and moved_files(path) == [os.path.basename(moved)]
    assert re.fullmatch(r".*\.corrupt-\d{8}T\d{6}", moved)
    with open(moved, "rb") as f:
        assert f.read() == damaged, "the damaged file is kept as it was"
    conn, again = open_database(path, 0.0)
    assert again is None
    assert conn.execute("SELECT count(*) FROM history").fetchone() == (0,)
    conn.close()


def test_a_second_server_on_the_same_file_is_refused(path: str) -> None:
    connect = faulty({})
    first, _ = open_database(path, 0.0, connect)
    first.execute("SELECT count(*) FROM history").fetchone()
    with pytest.raises(StoreError, match="in use by another process"):
        open_database(path, 0.0, connect)
    assert moved_files(path) == []
    first.close()


def test_an_unusable_directory_is_an_error_not_a_move(tmp_path: Any) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        open_database(str(tmp_path / "missing" / "dispatch.sqlite3"), 0.0)


# The dispatcher with a store.


async def start(path: str, events: list[dict[str, Any]] | None = None, **kwargs: Any) -> Dispatcher:
    dispatcher = Dispatcher(reactor, store=Store(path, reactor, **kwargs), kill_grace=1)
    if events is not None:
        dispatcher.events.subscribe("dispatcher", lambda e: events.append(e.args))
    dispatcher.startService()
    return dispatcher


@ensure
async def test_jobs_are_visible_only_once_recorded(path: str) -> None:
    gate = threading.Event()
    state: dict[str, Any] = {}
    dispatcher = await start(path, connect=faulty(state))
    try:
        await poll(lambda: dispatcher.recovered)
        state["gate"] = gate
        d = dispatcher.submit(dispatcher.parse_run({"action": "run", "a": "true"}))
        assert not d.called
        assert dispatcher.list_jobs() == {}
        # The id is taken while it is being recorded.
        with pytest.raises(InvalidJob, match="already being queued"):
            dispatcher.parse_run({"action": "run", "a": "true"})
        state["gate"] = None
        gate.set()
        [job] = await with_timeout(d)
        assert job.id == "a"
    finally:
        gate.set()
        await with_timeout(dispatcher.stopService())


@ensure
async def test_a_job_that_cannot_be_recorded_is_refused_and_not_queued(path: str) -> None:
    state: dict[str, Any] = {}
    dispatcher = await start(path, connect=faulty(state))
    try:
        await poll(lambda: dispatcher.recovered)
        state["full"] = True
        with pytest.raises(Unavailable, match=r"disk is full.*no job of this request was queued"):
            await with_timeout(dispatcher.run("x", "true"))
        assert dispatcher.list_jobs() == {} and dispatcher.scheduler.reserved == {}
        state["full"] = False
        record = await with_timeout(dispatcher.run("x", "true"))
        assert record["success"] == "true"
    finally:
        await with_timeout(dispatcher.stopService())


@ensure
async def test_restart_requeues_pending_in_order_and_interrupts_running(path: str) -> None:
    store, _ = await open_store(path)
    await store.finish(record("old", success="true"), 5.0)
    await store.add([(spec("r", "sleep 30"), 1.0, 2.0), (spec("p0", queue="pkg_queue"), 3.0, None),
                     (spec("p1", queue="pkg_queue"), 3.0, None), (spec("n"), 4.0, None)])
    # Pending in a queue the server no longer has (its --queue option was dropped).
    await store.add([(JobSpec("gone", ("true",), (("true",),), "dropped_queue"), 5.0, None)])
    await store.close()

    events: list[dict[str, Any]] = []
    dispatcher = await start(path, events)
    try:
        finished = {"r", "p0", "p1", "n", "gone"}
        await poll(lambda: {e["process_id"] for e in events if e["state"] == "finished"} >= finished)
        interrupted = next(e for e in events if e["process_id"] == "r")
        assert interrupted["state"] == "finished" and interrupted["interrupted"] is True
        assert interrupted["success"] == "false" and interrupted["killed"] is False
        assert "time_started" in interrupted["process_details"]
        started = [e["process_id"] for e in events if e["state"] == "running"]
        assert started.index("p0") < started.index("p1")
        assert "r" not in started, "an interrupted job was run again"
        assert (await dispatcher.last_record("r"))["interrupted"] is True
        assert (await dispatcher.last_record("old"))["success"] == "true"
        assert (await dispatcher.last_record("p1"))["success"] == "true"
        gone = await dispatcher.last_record("gone")
        assert gone["interrupted"] is True and "gone" not in started
    finally:
        await with_timeout(dispatcher.stopService())


@ensure
async def test_graceful_stop_interrupts_running_and_keeps_pending(path: str) -> None:
    dispatcher = await start(path)
    await with_timeout(dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [
        {"id": "busy", "commands": "sleep 30", "queue": "pkg_queue"},
        {"id": "next", "commands": "true", "queue": "pkg_queue"},
        {"id": "user", "commands": "sleep 30"}]})))
    assert dispatcher.jobs["busy"].state == "running"
    killed = dispatcher.kill(["user"])
    await with_timeout(dispatcher.stopService())
    await with_timeout(killed)
    store, opened = await open_store(path)
    assert [j.spec_fields["id"] for j in opened.jobs] == ["next"]
    busy = await store.latest("busy")
    assert busy["interrupted"] is True and busy["killed"] is False and busy["success"] == "false"
    assert busy["signal"] == "SIGTERM"
    user = await store.latest("user")
    assert user["killed"] is True and user["interrupted"] is False, "a user's kill stays a kill"
    await store.close()


@ensure
async def test_a_start_waits_until_the_store_can_record_it(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "START_RETRY_SECONDS", 0.05)
    state: dict[str, Any] = {}
    events: list[dict[str, Any]] = []
    dispatcher = await start(path, events, connect=faulty(state))
    try:
        await with_timeout(dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [
            {"id": "first", "commands": "sleep 0.3", "queue": "pkg_queue"},
            {"id": "second", "commands": "true", "queue": "pkg_queue"}]})))
        state["full"] = True
        await poll(lambda: "first" not in dispatcher.jobs)
        await poll(lambda: state["commits"] > 3)  # the start of "second" was tried, and is retried
        assert dispatcher.jobs["second"].state == "pending"
        state["full"] = False
        await poll(lambda: "second" not in dispatcher.jobs)
        assert [e["state"] for e in events if e["process_id"] == "second"] == ["pending", "running", "finished"]
    finally:
        await with_timeout(dispatcher.stopService())


@ensure
async def test_requests_before_recovery_wait_for_it(path: str) -> None:
    store, _ = await open_store(path)
    await store.add([(spec("early", queue="pkg_queue"), 1.0, None)])
    await store.close()
    dispatcher = Dispatcher(reactor, store=Store(path, reactor))
    d = dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [{"id": "late", "commands": "true",
                                                                           "queue": "pkg_queue"}]}))
    dispatcher.startService()  # recovery starts after the request arrived
    events: list[str] = []
    dispatcher.events.subscribe("dispatcher", lambda e: events.append(f"{e.args['process_id']} {e.args['state']}"))
    try:
        await with_timeout(d)
        await poll(lambda: "late finished" in events)
        assert events.index("early running") < events.index("late running")
    finally:
        await with_timeout(dispatcher.stopService())


@ensure
async def test_embedding_with_a_store(tmp_path: Any) -> None:
    path = str(tmp_path / "embedded.sqlite3")
    dispatcher = Dispatcher(reactor, store=Store(path, reactor))
    dispatcher.startService()
    record = await with_timeout(dispatcher.run("e1", ["echo kept"]))
    await with_timeout(dispatcher.stopService())
    again = Dispatcher(reactor, store=Store(path, reactor))
    again.startService()
    try:
        assert await with_timeout(again.last_record("e1")) == json.loads(json.dumps(record))
    finally:
        await with_timeout(again.stopService())


@ensure
async def test_history_without_a_store_or_with_a_closed_one_is_unavailable(path: str) -> None:
    with pytest.raises(Unavailable, match="no job history"):
        Dispatcher(reactor).read_history(0.0, 1.0, 10)
    dispatcher = await start(path)
    await with_timeout(dispatcher.stopService())
    with pytest.raises(Unavailable, match="the job store is closed"):
        await with_timeout(dispatcher.last_record("x"))


@ensure
async def test_looking_and_killing_right_after_a_start_see_the_recovered_jobs(path: str) -> None:
    store, _ = await open_store(path)
    await store.add([(spec("was-running", "sleep 30"), 1.0, 2.0), (spec("blocker", "sleep 30", "pkg_queue"), 3.0, 3.0),
                     (spec("waiting", queue="pkg_queue"), 4.0, None)])
    await store.close()
    dispatcher = Dispatcher(reactor, store=Store(path, reactor), kill_grace=1)
    # Asked before the store's jobs are taken up: the answers wait for them.
    history = dispatcher.last_record("was-running")
    killed = dispatcher.kill(["waiting", "unknown"])
    assert not dispatcher.recovered
    dispatcher.startService()
    try:
        assert (await with_timeout(history))["interrupted"] is True
        assert await with_timeout(killed) == (["waiting"], ["unknown"])
        assert (await with_timeout(dispatcher.last_record("waiting")))["killed"] is True
    finally:
        await with_timeout(dispatcher.stopService())


@ensure
async def test_a_big_run_starts_in_slices_and_a_stop_keeps_the_waiting_ones_pending(path: str) -> None:
    dispatcher = await start(path)
    per_turn = scheduler_module.STARTS_PER_TURN
    assert per_turn == 32  # as docs/processes.rst says
    jobs = [{"id": f"big{i:03d}", "commands": "sleep 30"} for i in range(per_turn * 3)]
    await with_timeout(dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": jobs})))
    # The reply came once all were recorded; only the first slice runs yet.
    running = [job_id for job_id, job in dispatcher.jobs.items() if job.state == "running"]
    assert running == [f"big{i:03d}" for i in range(per_turn)]
    # Stopping now: the running slice is interrupted, the others never start
    # and are pending again for the next start (they were recorded as started).
    await with_timeout(dispatcher.stopService())
    store, opened = await open_store(path)
    assert [j.spec_fields["id"] for j in opened.jobs] == [f"big{i:03d}" for i in range(per_turn, per_turn * 3)]
    assert all(j.time_started is None for j in opened.jobs)
    first = await store.latest("big000")
    assert first["interrupted"] is True
    await store.close()


@ensure
async def test_killing_many_pending_jobs_finishes_them_in_slices(path: str) -> None:
    events: list[dict[str, Any]] = []
    dispatcher = await start(path, events)
    per_turn = kills_module.KILLS_PER_TURN
    count = per_turn * 3
    await with_timeout(dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [
        {"id": "blocker", "commands": "sleep 30", "queue": "pkg_queue"},
        *({"id": f"p{i}", "commands": "true", "queue": "pkg_queue"} for i in range(count))]})))
    ids = [f"p{i}" for i in range(count)]
    d = dispatcher.kill(ids)
    # At once: out of the queue (never started, no longer listed), the
    # first slice finished; the others on the next turns.
    assert list(dispatcher.list_jobs()["pkg_queue"]) == ["blocker"]
    finished = [e["process_id"] for e in events if e["state"] == "finished"]
    assert finished == ids[:per_turn]
    assert not d.called
    killed, not_found = await with_timeout(d)
    assert (killed, not_found) == (ids, [])
    finished = [e["process_id"] for e in events if e["state"] == "finished"]
    assert finished == ids
    assert all(e["killed"] is True for e in events if e["state"] == "finished")
    assert set(dispatcher.jobs) == {"blocker"}
    # A second kill of the same ids while a first is finishing them waits for it;
    # a stop meanwhile records every one of them as killed.
    more = [f"q{i}" for i in range(count)]
    await with_timeout(dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [
        {"id": job_id, "commands": "true", "queue": "pkg_queue"} for job_id in more]})))
    first, second = dispatcher.kill(more), dispatcher.kill(more[-2:])
    assert not first.called and not second.called
    await with_timeout(dispatcher.stopService())
    assert (await with_timeout(first))[0] == more and (await with_timeout(second))[0] == more[-2:]
    store, opened = await open_store(path)
    assert opened.jobs == []  # none pending again: all killed, the blocker interrupted
    assert (await store.latest(more[-1]))["killed"] is True
    await store.close()
