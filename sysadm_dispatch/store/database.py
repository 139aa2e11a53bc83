"""
Persistence: the jobs a client was promised (accepted, not yet finished) and
the history of finished jobs, in one SQLite database.

Every SQLite call runs on the store's own writer thread; the reactor thread
only queues requests and gets Deferreds back, fired on the reactor thread.
Write requests that are waiting together share one transaction and one
commit, so a burst of ``run`` requests costs one fsync, not one each; a
request's Deferred fires only after its commit.  Finished records wait up
to ``FINISH_DELAY`` to share one (a busy server finishes hundreds of jobs
a second), but never past another request: everything else is written
and read in the order asked.  What survives what is described in
docs/persistence.rst.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.job import JobSpec

log = Logger()

#: How long, at most, a finished record waits to be written with others.
FINISH_DELAY = 0.05
#: Bytes that must be free beside the database for ``probe`` to succeed.
PROBE_MIN_FREE = 64 * 1024

#: One step per schema version: the statements that take the schema from
#: version N to N + 1, run in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE active_jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL UNIQUE,
            spec TEXT NOT NULL,
            time_queued REAL NOT NULL,
            time_started REAL)""",
        """CREATE TABLE history (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL,
            time_finished REAL NOT NULL,
            record TEXT NOT NULL)""",
        "CREATE INDEX history_by_time ON history (time_finished)",
        "CREATE INDEX history_by_job ON history (job_id)",
    ),
    (
        # Who submitted a job and who ended it (a user, timeout, shutdown):
        # NULL in rows written before.
        "ALTER TABLE active_jobs ADD COLUMN submitted_by TEXT",
        "ALTER TABLE history ADD COLUMN submitted_by TEXT",
        "ALTER TABLE history ADD COLUMN killed_by TEXT",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

#: SQLite result codes meaning the file is not a usable database of ours.
_BROKEN = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR", "SQLITE_CANTOPEN")

Connect = Callable[[str], sqlite3.Connection]
#: Finished records (finish time, record), newest first, and whether more matched.
HistoryPage = tuple[list[tuple[float, dict[str, Any]]], bool]


class StoreError(Exception):
    """The database could not do what was asked; the message says why, for a client."""


class _NotOurs(sqlite3.DatabaseError):
    """The file is a damaged database, or someone else's."""


@dataclass(frozen=True)
class StoredJob:
    """An active job as recorded: ``time_started`` is None while it is pending."""

    spec: JobSpec
    time_queued: float
    time_started: float | None


@dataclass(frozen=True)
class Opened:
    """What ``Store.open`` found: the active jobs in acceptance order."""

    jobs: list[StoredJob]
    moved_aside: str | None


def spec_to_json(spec: JobSpec) -> str:
    return json.dumps({
        "id": spec.id, "commands": list(spec.commands), "argvs": [list(a) for a in spec.argvs],
        "queue": spec.queue, "cwd": spec.cwd, "env": dict(spec.env), "timeout": spec.timeout,
    })


def spec_from_json(text: str) -> JobSpec:
    d = json.loads(text)
    return JobSpec(d["id"], tuple(d["commands"]), tuple(tuple(a) for a in d["argvs"]), d["queue"], d["cwd"],
                   dict(d["env"]), d["timeout"])


def _connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _error_name(e: BaseException) -> str:
    return str(getattr(e, "sqlite_errorname", ""))


def _is_broken(e: sqlite3.Error) -> bool:
    return isinstance(e, _NotOurs) or _error_name(e).startswith(_BROKEN)


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


def open_database(path: str, now: float, connect: Connect = _connect, *,
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
                if _error_name(e) in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(e):
                    raise StoreError(f"{path} is in use by another process (another server?)") from None
                raise StoreError(f"cannot open {path}: {e}") from None
            moved = move_aside(path, now)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
    raise AssertionError("unreachable")


class _Call:
    __slots__ = ("args", "deferred", "fn", "write")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], write: bool) -> None:
        self.fn = fn
        self.args = args
        self.write = write
        self.deferred: Deferred[Any] = Deferred()


class Store:
    """
    The job store of one server.  ``open`` starts the writer thread and
    returns the jobs that were active when the server last stopped (or
    died); ``close`` finishes every queued request, then stops it.  The
    path ``":memory:"`` gives a store that keeps nothing across restarts
    (for measurements and tests).
    """

    def __init__(self, path: str, reactor: Any = None, *, connect: Connect = _connect,
                 max_batch: int = 512) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.path = path
        self.reactor = reactor
        self.connect = connect
        self.max_batch = max_batch
        self._conn: sqlite3.Connection | None = None
        self._unavailable = "the job store is not open"
        self._checked = False
        self._calls: deque[_Call] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Finished records not yet handed to the writer thread (see ``finish``).
        self._finishes: list[tuple[tuple[str, float, dict[str, Any]], Deferred[None]]] = []
        self._flush_call: Any = None
        #: ``observe(commit_seconds, errors)`` on the reactor thread after each
        #: pass of the writer thread: how long its commits took, and how many
        #: requests the store could not do (the metrics count with these).
        self.observers: list[Callable[[list[float], int], None]] = []

    def prepare(self) -> str | None:
        """
        Open and check the database now, on the calling thread, before the
        reactor runs (``twistd`` startup); returns where a broken file was
        moved, if one was.  Raises ``StoreError``.
        """
        conn, moved = open_database(self.path, self.reactor.seconds(), self.connect)
        conn.close()
        self._checked = True
        return moved

    # The reactor side.

    def open(self) -> Deferred[Opened]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"store {self.path}", daemon=True)
            self._thread.start()
        return self._submit(self._open, (self.reactor.seconds(),), write=False)

    def close(self) -> Deferred[None]:
        if self._thread is None or self._closed:
            self._closed = True
            return succeed(None)
        d = self._submit(self._close, (), write=False)
        self._closed = True
        return d

    def add(self, jobs: Sequence[tuple[JobSpec, float, float | None]]) -> Deferred[None]:
        """Record accepted jobs in this order: ``(spec, time queued, time started or None)``."""
        rows = [(spec.id, spec_to_json(spec), queued, started, spec.submitted_by) for spec, queued, started in jobs]
        # Other jobs' waiting ends may stay waiting; an end of one of these goes first.
        ending = {job_id for (job_id, _, _), _ in self._finishes}
        return self._submit(self._add, (rows,), write=True, flush=not ending.isdisjoint(row[0] for row in rows))

    def mark_started(self, job_id: str, now: float) -> Deferred[None]:
        return self._submit(self._mark, (job_id, now), write=True)

    def mark_pending(self, job_id: str) -> Deferred[None]:
        return self._submit(self._mark, (job_id, None), write=True)

    def finish(self, record: dict[str, Any], time_finished: float) -> Deferred[None]:
        """
        The job is no longer active; ``record`` joins the history.  Written
        within ``FINISH_DELAY`` seconds, with the other records finished
        meanwhile, or before the next request that is not a new job's.
        """
        if self._closed:
            return fail(StoreError("the job store is closed"))
        d: Deferred[None] = Deferred()
        self._finishes.append(((record["process_id"], time_finished, record), d))
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(FINISH_DELAY, self._flush)
        return d

    def _flush(self) -> None:
        """Hand the waiting finished records to the writer thread, as one request."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._finishes:
            return
        batch, self._finishes = self._finishes, []
        rows = [row for row, _ in batch]
        waiters = [d for _, d in batch]

        def written(result: object) -> None:
            if isinstance(result, Failure) and not result.check(StoreError) and len(batch) > 1:
                # A bad record (a bug) must not fail the others: each on its own.
                for row, d in batch:
                    self._submit(self._finish, ([row],), write=True, flush=False).chainDeferred(d)
                return
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)

        self._submit(self._finish, (rows,), write=True, flush=False).addBoth(written)

    def probe(self) -> Deferred[None]:
        """A write of nothing that matters, committed like any other: fails if the store cannot write."""
        return self._submit(self._probe, (), write=True)

    def history(self, start: float, end: float, limit: int) -> Deferred[HistoryPage]:
        """Records finished in ``[start, end]``, newest first, at most ``limit``; and whether more matched."""
        return self._submit(self._history, (start, end, limit), write=False)

    def latest(self, job_id: str) -> Deferred[dict[str, Any] | None]:
        """The most recent finished record of ``job_id``, or None."""
        return self._submit(self._latest, (job_id,), write=False)

    def prune(self, before: float, keep: int, chunk: int = 2000) -> Deferred[int]:
        """Delete at most ``chunk`` records finished before ``before`` or beyond the newest ``keep``."""
        return self._submit(self._prune, (before, keep, chunk), write=True)

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], *, write: bool,
                flush: bool = True) -> Deferred[Any]:
        if self._closed:
            return fail(StoreError("the job store is closed"))
        if flush and self._finishes:
            self._flush()
        call = _Call(fn, args, write)
        with self._wake:
            self._calls.append(call)
            self._wake.notify()
        return call.deferred

    # The writer thread.

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._calls:
                    self._wake.wait()
                calls = [self._calls.popleft() for _ in range(min(len(self._calls), self.max_batch))]
            results: list[tuple[Deferred[Any], Any]] = []
            commits: list[float] = []
            i = 0
            while i < len(calls):
                if calls[i].write:
                    j = i
                    while j < len(calls) and calls[j].write:
                        j += 1
                    began = time.monotonic()
                    results += self._write(calls[i:j])
                    commits.append(time.monotonic() - began)
                    i = j
                else:
                    results.append((calls[i].deferred, self._read(calls[i])))
                    i += 1
            self.reactor.callFromThread(self._deliver, results, commits)
            if any(call.fn == self._close for call in calls):
                return

    def _read(self, call: _Call) -> Any:
        try:
            if call.fn != self._open and call.fn != self._close and self._conn is None:
                raise StoreError(self._unavailable)
            return call.fn(*call.args)
        except sqlite3.Error as e:
            return Failure(StoreError(f"the job store cannot read: {e}"))
        except Exception:
            return Failure()

    def _write(self, calls: list[_Call]) -> list[tuple[Deferred[Any], Any]]:
        conn = self._conn
        if conn is None:
            return [(call.deferred, Failure(StoreError(self._unavailable))) for call in calls]
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [call.fn(*call.args) for call in calls]
            conn.execute("COMMIT")
            return [(call.deferred, result) for call, result in zip(calls, results, strict=True)]
        except Exception as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if len(calls) > 1:
                # One bad request must not fail the others: each on its own.
                out: list[tuple[Deferred[Any], Any]] = []
                for call in calls:
                    out += self._write([call])
                return out
            if isinstance(e, sqlite3.Error):
                return [(calls[0].deferred, Failure(StoreError(f"the job store cannot write: {e}")))]
            return [(calls[0].deferred, Failure())]

    def _open(self, now: float) -> Opened:
        try:
            self._conn, moved = open_database(self.path, now, self.connect, check=not self._checked)
        except StoreError as e:
            self._unavailable = f"the job store is unavailable: {e}"
            raise
        rows = self._conn.execute(
            "SELECT spec, time_queued, time_started, submitted_by FROM active_jobs ORDER BY seq").fetchall()
        return Opened([StoredJob(replace(spec_from_json(spec), submitted_by=by), queued, started)
                       for spec, queued, started, by in rows], moved)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._unavailable = "the job store is closed"

    def _add(self, rows: list[tuple[str, str, float, float | None, str | None]]) -> None:
        assert self._conn is not None
        # REPLACE: a row left behind by a job whose end could not be recorded
        # is stale; the dispatcher's job table is the truth about what is active.
        self._conn.executemany(
            "INSERT OR REPLACE INTO active_jobs (job_id, spec, time_queued, time_started, submitted_by) "
            "VALUES (?, ?, ?, ?, ?)", rows)

    def _probe(self) -> None:
        assert self._conn is not None
        self._conn.execute("UPDATE schema_version SET version = version")
        # A commit may fit in space the database file already has: the free
        # space says whether the next one that needs more will.
        if self.path != ":memory:":
            directory = os.path.dirname(os.path.abspath(self.path))
            st = os.statvfs(directory)
            free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
            if free < PROBE_MIN_FREE:
                raise StoreError(f"the job store cannot write: disk is full ({free} bytes free in {directory})")

    def _mark(self, job_id: str, now: float | None) -> None:
        assert self._conn is not None
        self._conn.execute("UPDATE active_jobs SET time_started = ? WHERE job_id = ?", (now, job_id))

    def _finish(self, rows: list[tuple[str, float, dict[str, Any]]]) -> None:
        assert self._conn is not None
        self._conn.executemany("DELETE FROM active_jobs WHERE job_id = ?", [(job_id,) for job_id, _, _ in rows])
        # Encoded one at a time as SQLite takes them: a record may hold
        # megabytes of output, and a batch hundreds of records.
        self._conn.executemany(
            "INSERT INTO history (job_id, time_finished, record, submitted_by, killed_by) VALUES (?, ?, ?, ?, ?)",
            ((job_id, time_finished, json.dumps(record, ensure_ascii=False), record.get("submitted_by"),
              record.get("killed_by")) for job_id, time_finished, record in rows))

    def _history(self, start: float, end: float, limit: int) -> HistoryPage:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT time_finished, record FROM history WHERE time_finished BETWEEN ? AND ? "
            "ORDER BY time_finished DESC, seq DESC LIMIT ?", (start, end, limit + 1)).fetchall()
        return [(t, json.loads(r)) for t, r in rows[:limit]], len(rows) > limit

    def _latest(self, job_id: str) -> dict[str, Any] | None:
        assert self._conn is not None
        row = self._conn.execute("SELECT record FROM history WHERE job_id = ? ORDER BY seq DESC LIMIT 1",
                                 (job_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def _prune(self, before: float, keep: int, chunk: int) -> int:
        assert self._conn is not None
        deleted = self._conn.execute(
            "DELETE FROM history WHERE seq IN "
            "(SELECT seq FROM history WHERE time_finished < ? ORDER BY time_finished LIMIT ?)",
            (before, chunk)).rowcount
        excess = self._conn.execute("SELECT count(*) FROM history").fetchone()[0] - keep
        if excess > 0 and deleted < chunk:
            deleted += self._conn.execute(
                "DELETE FROM history WHERE seq IN (SELECT seq FROM history ORDER BY time_finished, seq LIMIT ?)",
                (min(excess, chunk - deleted),)).rowcount
        return int(deleted)

    def _deliver(self, results: list[tuple[Deferred[Any], Any]], commits: list[float]) -> None:
        if self.observers:
            errors = sum(1 for _, result in results if isinstance(result, Failure) and result.check(StoreError))
            for observe in self.observers:
                observe(commits, errors)
        _deliver(results)


def _deliver(results: list[tuple[Deferred[Any], Any]]) -> None:
    for d, result in results:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


class HistoryPruner(Service):
    """
    Keeps the history within ``days`` and ``max_jobs``: prunes at start and
    every ``interval`` seconds of ``clock``, in chunks so that other writes
    are never held up for long.
    """

    def __init__(self, store: Store, clock: Any, *, days: float, max_jobs: int, interval: float = 3600.0) -> None:
        self.store = store
        self.clock = clock
        self.days = days
        self.max_jobs = max_jobs
        self.interval = interval
        self._loop: LoopingCall | None = None
        self._running: Deferred[int] | None = None
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.prune)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        d: Deferred[None] = Deferred()
        if self._running is None:
            d.callback(None)
        else:
            self._running.addBoth(lambda _: d.callback(None))
        return d

    def prune(self) -> Deferred[int]:
        """One pruning pass; fires with the number of records deleted."""
        if self._running is not None:
            return succeed(0)
        before = self.clock.seconds() - self.days * 86400
        total = [0]
        done: Deferred[int] = Deferred()

        def step(_: object = None) -> None:
            self.store.prune(before, self.max_jobs).addCallbacks(chunk, failed)

        def chunk(deleted: int) -> None:
            total[0] += deleted
            if deleted and not self._stopping:
                step()
                return
            finish(total[0])

        def failed(f: Failure) -> None:
            log.error("pruning the job history failed: {error}", error=f.getErrorMessage())
            finish(total[0])

        def finish(n: int) -> None:
            if n:
                log.info("pruned {count} finished jobs from the history", count=n)
            self._running = None
            done.callback(n)

        self._running = done
        step()
        return done
