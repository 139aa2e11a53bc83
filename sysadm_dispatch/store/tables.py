"""
The statements the store runs, on its writer thread only: every method
of ``Tables`` is called there, one at a time, inside the transaction the
writer opened for it (writes) or outside any (reads).
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from .migrations import Connect, open_database
from .records import HistoryPage, Opened, StoredJob, StoreError, spec_fields

#: Bytes that must be free beside the database for ``probe`` to succeed.
PROBE_MIN_FREE = 64 * 1024

#: A new job's row: id, spec as JSON, time queued, time started or None, who submitted it.
ActiveRow = tuple[str, str, float, float | None, str | None]
#: A finished job: id, time finished, its record.
FinishedRow = tuple[str, float, dict[str, Any]]


class Tables:
    """The open database of one store, and what may be asked of it."""

    def __init__(self, path: str, connect: Connect) -> None:
        self.path = path
        self.connect = connect
        self.conn: sqlite3.Connection | None = None
        #: Why there is no connection, for the error of a request made without one.
        self.unavailable = "the job store is not open"
        #: Whether ``prepare`` checked the file already (``open`` need not again).
        self.checked = False

    def open(self, now: float) -> Opened:
        try:
            self.conn, moved = open_database(self.path, now, self.connect, check=not self.checked)
        except StoreError as e:
            self.unavailable = f"the job store is unavailable: {e}"
            raise
        rows = self.conn.execute(
            "SELECT spec, time_queued, time_started, submitted_by FROM active_jobs ORDER BY seq").fetchall()
        return Opened([StoredJob(spec_fields(spec, by), queued, started) for spec, queued, started, by in rows],
                      moved)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.unavailable = "the job store is closed"

    def _conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError(self.unavailable)
        return self.conn

    def add(self, rows: list[ActiveRow]) -> None:
        # REPLACE: a row left behind by a job whose end could not be recorded
        # is stale; the dispatcher's job table is the truth about what is active.
        self._conn().executemany(
            "INSERT OR REPLACE INTO active_jobs (job_id, spec, time_queued, time_started, submitted_by) "
            "VALUES (?, ?, ?, ?, ?)", rows)

    def probe(self) -> None:
        self._conn().execute("UPDATE schema_version SET version = version")
        # A commit may fit in space the database file already has: the free
        # space says whether the next one that needs more will.
        if self.path != ":memory:":
            directory = os.path.dirname(os.path.abspath(self.path))
            st = os.statvfs(directory)
            free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
            if free < PROBE_MIN_FREE:
                raise StoreError(f"the job store cannot write: disk is full ({free} bytes free in {directory})")

    def mark(self, job_id: str, now: float | None) -> None:
        self._conn().execute("UPDATE active_jobs SET time_started = ? WHERE job_id = ?", (now, job_id))

    def finish(self, rows: list[FinishedRow]) -> None:
        conn = self._conn()
        conn.executemany("DELETE FROM active_jobs WHERE job_id = ?", [(job_id,) for job_id, _, _ in rows])
        # Encoded one at a time as SQLite takes them: a record may hold
        # megabytes of output, and a batch hundreds of records.
        conn.executemany(
            "INSERT INTO history (job_id, time_finished, record, submitted_by, killed_by) VALUES (?, ?, ?, ?, ?)",
            ((job_id, time_finished, json.dumps(record, ensure_ascii=False), record.get("submitted_by"),
              record.get("killed_by")) for job_id, time_finished, record in rows))

    def history(self, start: float, end: float, limit: int) -> HistoryPage:
        rows = self._conn().execute(
            "SELECT time_finished, record FROM history WHERE time_finished BETWEEN ? AND ? "
            "ORDER BY time_finished DESC, seq DESC LIMIT ?", (start, end, limit + 1)).fetchall()
        return [(t, json.loads(r)) for t, r in rows[:limit]], len(rows) > limit

    def latest(self, job_id: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT record FROM history WHERE job_id = ? ORDER BY seq DESC LIMIT 1",
                                   (job_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def prune(self, before: float, keep: int, chunk: int) -> int:
        conn = self._conn()
        deleted = conn.execute(
            "DELETE FROM history WHERE seq IN "
            "(SELECT seq FROM history WHERE time_finished < ? ORDER BY time_finished LIMIT ?)",
            (before, chunk)).rowcount
        excess = conn.execute("SELECT count(*) FROM history").fetchone()[0] - keep
        if excess > 0 and deleted < chunk:
            deleted += conn.execute(
                "DELETE FROM history WHERE seq IN (SELECT seq FROM history ORDER BY time_finished, seq LIMIT ?)",
                (min(excess, chunk - deleted),)).rowcount
        return int(deleted)
