"""
Stand-ins shared by the tests, one section per part of the server they
stand in for.  Fakes never replace the real layer: tests with real processes,
sockets and stores prove the product; these drive one part alone.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet.defer import Deferred, fail, succeed

from sysadm_dispatch.core.job import Job
from sysadm_dispatch.process.result import RunResult
from sysadm_dispatch.store.records import Opened, StoreError

# ---------------------------------------------------------------------------
# The dispatcher's side (core): a job runner and a store, both in memory.
# ---------------------------------------------------------------------------


class FakeRunner:
    """
    Stands in for ``JobRunner`` (``runner_factory=FakeRunner``): runs
    nothing; the test feeds output and ends commands.  ``made`` lists every
    runner made, in order (clear it at the start of a test).
    """

    made: ClassVar[list[FakeRunner]] = []

    def __init__(self, reactor: Any, job: Job, *, environ: Any = None, kill_grace: float = 0.0,
                 on_output: Any = None) -> None:
        self.job = job
        self.on_output = on_output
        self.done: Deferred[RunResult] = Deferred()
        self.kills = 0
        FakeRunner.made.append(self)

    def start(self) -> Deferred[RunResult]:
        self.job.begin_command()
        return self.done

    def output(self, data: bytes) -> None:
        self.job.logs[-1].write(data)
        self.on_output(self.job, len(self.job.logs) - 1, data)

    def end(self, code: int, result: RunResult = RunResult()) -> None:
        """The command exits with ``code``, and the run is over with ``result``."""
        self.job.end_command(code)
        self.done.callback(result)

    def kill(self, timed_out: bool = False) -> None:
        self.kills += 1
        if not self.done.called:
            self.end(143, RunResult("timed_out" if timed_out else "killed", "SIGTERM"))


class FakeStore:
    """
    Stands in for ``store.database.Store``: keeps what it is told in lists;
    each write answers at once, or (``hold = True``) when the test calls
    ``settle()``; ``broken`` makes every write fail with ``StoreError``.
    """

    path = ":memory:"

    def __init__(self, opened: Opened | None = None) -> None:
        self.opened = opened if opened is not None else Opened([], None)
        self.added: list[tuple[Any, float, float | None]] = []
        self.started: list[str] = []
        self.pending_again: list[str] = []
        self.finished: list[dict[str, Any]] = []
        self.history_asked: list[tuple[float, float, int]] = []
        self.closed = False
        self.broken = False
        self.hold = False
        self._held: list[Deferred[None]] = []

    def _write(self) -> Deferred[None]:
        if self.closed:
            return fail(StoreError("the job store is closed"))
        if self.broken:
            return fail(StoreError("disk is full"))
        if self.hold:
            d: Deferred[None] = Deferred()
            self._held.append(d)
            return d
        return succeed(None)

    def settle(self) -> None:
        held, self._held = self._held, []
        for d in held:
            d.callback(None)

    def open(self) -> Deferred[Opened]:
        return succeed(self.opened)

    def add(self, rows: Any) -> Deferred[None]:
        d = self._write()
        self.added.extend(rows)
        return d

    def mark_started(self, job_id: str, now: float) -> Deferred[None]:
        d = self._write()
        self.started.append(job_id)
        return d

    def mark_pending(self, job_id: str) -> Deferred[None]:
        d = self._write()
        self.pending_again.append(job_id)
        return d

    def finish(self, record: dict[str, Any], time_finished: float) -> Deferred[None]:
        d = self._write()
        self.finished.append(record)
        return d

    def history(self, start: float, end: float, limit: int) -> Deferred[Any]:
        self.history_asked.append((start, end, limit))
        return fail(StoreError("disk is full")) if self.broken else succeed(([], False))

    def latest(self, job_id: str) -> Deferred[dict[str, Any] | None]:
        return succeed(next((r for r in reversed(self.finished) if r["process_id"] == job_id), None))

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)
