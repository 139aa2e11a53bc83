"""
The dispatcher's bookkeeping in the store: new jobs recorded before they are
accepted, starts recorded before they happen, finished records kept as
history, the jobs of the store taken up at a start, and history reads.
docs/persistence.rst states what this guarantees.  Without a store, every
write is a no-op and there is no history.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..store.database import Store
from ..store.records import HistoryPage, Opened, StoreError
from .job import Job
from .spec import JobSpec

log = Logger()


class Unavailable(Exception):
    """The dispatcher cannot take this work now (full, stopping, or its store cannot write)."""


#: ``take_up(requeued, lost)``: the jobs of the store that are pending again,
#: in their original order, and those that cannot be (they were running when
#: the server died, or their queue is gone): these end ``interrupted``.
TakeUp = Callable[[list[Job], list[Job]], None]


class Journal:
    """
    Every store write of the dispatcher goes through here, so that stopping
    can wait for all of them (``close``) and a failed one is logged once.
    """

    def __init__(self, store: Store | None) -> None:
        self.store = store
        self._writes = 0
        self._writes_waiters: list[Deferred[None]] = []
        self._recovered = store is None
        self._recovery_waiters: list[Deferred[None]] = []

    @property
    def durable(self) -> bool:
        """Whether jobs are recorded (there is a store)."""
        return self.store is not None

    # Taking up the store's jobs at a start.

    @property
    def recovered(self) -> bool:
        """False while the jobs of the store are being taken up after a start."""
        return self._recovered

    def when_recovered(self) -> Deferred[None]:
        """Fires once the jobs of the store have been taken up (at once without a store)."""
        if self._recovered:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._recovery_waiters.append(waiter)
        return waiter

    def open(self, queues: Collection[str], log_cap: int, take_up: TakeUp) -> None:
        """Open the store and hand its jobs to ``take_up`` (see ``TakeUp``)."""
        if self.store is None or self._recovered:
            return
        d = self.track(self.store.open().addCallbacks(lambda opened: self._recover(opened, queues, log_cap, take_up),
                                                       self._store_failed))
        d.addErrback(lambda f: log.failure("bug while taking up the jobs of the store", f))

    def _recover(self, opened: Opened, queues: Collection[str], log_cap: int, take_up: TakeUp) -> None:
        """
        Jobs that were pending are queued again; jobs that were running when
        the server died are not run again (half a ``pkg install`` must not be
        repeated blindly).
        """
        if opened.moved_aside:
            log.critical("the job store {path} was corrupt or unreadable: moved it to {moved} and started an "
                         "empty one; queued jobs and history in it are not used", path=self.store and self.store.path,
                         moved=opened.moved_aside)
        requeued: list[Job] = []
        lost: list[Job] = []
        for stored in opened.jobs:
            job = Job(JobSpec(**stored.spec_fields), log_cap, stored.time_queued)
            if stored.time_started is not None:
                job.start(stored.time_started)
                log.warn("job {job_id} was running when the server stopped without finishing it: "
                         "recorded as interrupted, not run again", job_id=job.id)
                lost.append(job)
            elif job.queue not in queues:
                log.warn("job {job_id} was pending in queue {queue}, which no longer exists: recorded as "
                         "interrupted", job_id=job.id, queue=job.queue)
                lost.append(job)
            else:
                requeued.append(job)
        take_up(requeued, lost)
        if opened.jobs:
            log.info("job store: {count} pending jobs queued again", count=len(requeued))
        self._now_recovered()

    def _store_failed(self, f: Failure) -> None:
        log.critical("the job store cannot be used; run requests will be refused: {error}",
                     error=f.getErrorMessage())
        self._now_recovered()

    def _now_recovered(self) -> None:
        self._recovered = True
        waiters, self._recovery_waiters = self._recovery_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # Writes.

    def add(self, rows: Sequence[tuple[JobSpec, float, float | None]]) -> Deferred[None]:
        """
        Record new jobs ``(spec, time queued, time started or None)`` in one
        commit; fails with ``Unavailable`` if the store could not.  (The
        caller ``track``s the Deferred with what it does next.)
        """
        assert self.store is not None

        def not_recorded(f: Failure) -> Failure:
            if not f.check(StoreError):
                return f
            log.error("jobs {ids!r} refused: the store could not record them: {error}",
                      ids=[spec.id for spec, _, _ in rows], error=f.getErrorMessage())
            return Failure(Unavailable(f"{f.getErrorMessage()}; no job of this request was queued"))

        return self.store.add(rows).addErrback(not_recorded)

    def mark_started(self, job_id: str, now: float) -> Deferred[Any]:
        """Record that ``job_id`` starts; fails with ``StoreError`` if it could not (the caller ``track``s it)."""
        assert self.store is not None
        return self.store.mark_started(job_id, now)

    def mark_pending(self, job_id: str) -> None:
        """A job recorded as started did not start (the server stops): pending again."""
        if self.store is not None:
            self.track(self.store.mark_pending(job_id)).addErrback(self._log_store_error, job_id)

    def finished(self, job: Job, record: dict[str, Any]) -> None:
        if self.store is not None:
            assert job.time_finished is not None
            self.track(self.store.finish(record, job.time_finished)).addErrback(self._log_store_error, job.id)

    def _log_store_error(self, f: Failure, job_id: str) -> None:
        log.error("the store could not record the state of job {job_id}: {error}", job_id=job_id,
                  error=f.getErrorMessage())

    def track(self, d: Deferred[Any]) -> Deferred[Any]:
        """Count ``d`` (a write and what follows it) among the writes that ``close`` waits for."""
        self._writes += 1
        return d.addBoth(self._settled)

    def _settled(self, result: Any) -> Any:
        self._writes -= 1
        if not self._writes:
            waiters, self._writes_waiters = self._writes_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result

    def close(self) -> Deferred[None]:
        """Once every write is done, close the store."""
        if self.store is None:
            return succeed(None)
        store = self.store
        if not self._writes:
            return store.close()
        waiter: Deferred[None] = Deferred()
        self._writes_waiters.append(waiter)
        return waiter.addCallback(lambda _: store.close())

    # Reading the history.

    def history(self, start: float, end: float, limit: int) -> Deferred[HistoryPage]:
        """Finished records in ``[start, end]``, newest first, at most ``limit``, and whether more matched."""
        store = self._history_store()
        if self._recovered:
            return store.history(start, end, limit).addErrback(_unavailable)
        d = self.when_recovered().addCallback(lambda _: store.history(start, end, limit))
        return d.addErrback(_unavailable)

    def latest(self, job_id: str) -> Deferred[dict[str, Any] | None]:
        """The latest finished record of ``job_id``, or None."""
        store = self._history_store()
        if self._recovered:
            return store.latest(job_id).addErrback(_unavailable)
        return self.when_recovered().addCallback(lambda _: store.latest(job_id)).addErrback(_unavailable)

    def _history_store(self) -> Store:
        if self.store is None:
            raise Unavailable("this server keeps no job history (it runs without a store)")
        return self.store


def _unavailable(f: Failure) -> Failure:
    if f.check(StoreError):
        return Failure(Unavailable(f.getErrorMessage()))
    return f
