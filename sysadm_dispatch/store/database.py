"""
Persistence: the jobs a client was promised (accepted, not yet finished) and
the history of finished jobs, in one SQLite database.

Every SQLite call runs on the store's writer thread (``writer.Writer``);
the reactor thread only queues requests and gets Deferreds back, fired on
the reactor thread.  Write requests that are waiting together share one
transaction and one commit, so a burst of ``run`` requests costs one
fsync, not one each; a request's Deferred fires only after its commit.
Finished records wait up to ``FINISH_DELAY`` to share one (a busy server
finishes hundreds of jobs a second), but never past another request:
everything else is written and read in the order asked.  What survives
what is described in docs/persistence.rst.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from ..reactors import IClockFromThreads
from .migrations import Connect, connect, open_database
from .records import HistoryPage, Opened, SpecLike, StoreError, spec_to_json
from .tables import FinishedRow, Tables
from .writer import PassResult, Writer

#: How long, at most, a finished record waits to be written with others.
FINISH_DELAY = 0.05


class Store:
    """
    The job store of one server.  ``open`` starts the writer thread and
    returns the jobs that were active when the server last stopped (or
    died); ``close`` finishes every queued request, then stops it.  The
    path ``":memory:"`` gives a store that keeps nothing across restarts
    (for measurements and tests).
    """

    def __init__(self, path: str, reactor: IClockFromThreads, *, connect: Connect = connect,
                 max_batch: int = 512) -> None:
        self.path = path
        self.reactor = reactor
        self.connect = connect
        self._tables = Tables(path, connect)
        self._writer = Writer(reactor, self._tables, observe=self._observe, max_batch=max_batch)
        self._opened = False
        self._closed = False
        #: Finished records not yet handed to the writer (see ``finish``).
        self._finishes: list[tuple[FinishedRow, Deferred[None]]] = []
        self._flush_call: IDelayedCall | None = None
        #: ``observe(commit_seconds, errors)`` on the reactor thread after each
        #: pass of the writer thread: how long its commits took, and how many
        #: requests the store could not do (the metrics count with these).
        self.observers: list[Callable[[list[float], int], None]] = []

    @property
    def max_batch(self) -> int:
        return self._writer.max_batch

    def prepare(self) -> str | None:
        """
        Open and check the database now, on the calling thread, before the
        reactor runs (``twistd`` startup); returns where a broken file was
        moved, if one was.  Raises ``StoreError``.
        """
        conn, moved = open_database(self.path, self.reactor.seconds(), self.connect)
        conn.close()
        self._tables.checked = True
        return moved

    def open(self) -> Deferred[Opened]:
        if not self._opened:
            self._opened = True
            self._writer.start()
        return self._submit(self._tables.open, (self.reactor.seconds(),), write=False)

    def close(self) -> Deferred[None]:
        """Finish every request queued, close the database and stop the writer thread."""
        if not self._opened or self._closed:
            self._closed = True
            return succeed(None)
        if self._finishes:
            self._flush()
        self._closed = True
        return self._writer.submit(self._tables.close, (), write=False, last=True)

    def add(self, jobs: Sequence[tuple[SpecLike, float, float | None]]) -> Deferred[None]:
        """Record accepted jobs in this order: ``(spec, time queued, time started or None)``."""
        rows = [(spec.id, spec_to_json(spec), queued, started, spec.submitted_by) for spec, queued, started in jobs]
        # Other jobs' waiting ends may stay waiting; an end of one of these goes first.
        ending = {job_id for (job_id, _, _), _ in self._finishes}
        return self._submit(self._tables.add, (rows,), write=True,
                            flush=not ending.isdisjoint(row[0] for row in rows))

    def mark_started(self, job_id: str, now: float) -> Deferred[None]:
        return self._submit(self._tables.mark, (job_id, now), write=True)

    def mark_pending(self, job_id: str) -> Deferred[None]:
        return self._submit(self._tables.mark, (job_id, None), write=True)

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
        """Hand the waiting finished records to the writer, as one request."""
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
                    self._writer.submit(self._tables.finish, ([row],), write=True).chainDeferred(d)
                return
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)

        self._writer.submit(self._tables.finish, (rows,), write=True).addBoth(written)

    def probe(self) -> Deferred[None]:
        """A write of nothing that matters, committed like any other: fails if the store cannot write."""
        return self._submit(self._tables.probe, (), write=True)

    def history(self, start: float, end: float, limit: int) -> Deferred[HistoryPage]:
        """Records finished in ``[start, end]``, newest first, at most ``limit``; and whether more matched."""
        return self._submit(self._tables.history, (start, end, limit), write=False)

    def latest(self, job_id: str) -> Deferred[dict[str, Any] | None]:
        """The most recent finished record of ``job_id``, or None."""
        return self._submit(self._tables.latest, (job_id,), write=False)

    def prune(self, before: float, keep: int, chunk: int = 2000) -> Deferred[int]:
        """Delete at most ``chunk`` records finished before ``before`` or beyond the newest ``keep``."""
        return self._submit(self._tables.prune, (before, keep, chunk), write=True)

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], *, write: bool,
                flush: bool = True) -> Deferred[Any]:
        if self._closed:
            return fail(StoreError("the job store is closed"))
        if not self._opened:
            return fail(StoreError(self._tables.unavailable))
        if flush and self._finishes:
            self._flush()
        return self._writer.submit(fn, args, write=write)

    def _observe(self, result: PassResult) -> None:
        if self.observers:
            results, commits = result
            errors = sum(1 for _, outcome in results if isinstance(outcome, Failure) and outcome.check(StoreError))
            for observe in self.observers:
                observe(commits, errors)
