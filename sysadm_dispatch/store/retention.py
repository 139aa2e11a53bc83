"""Retention: the history kept within its age and size limits by a timer service."""

from __future__ import annotations

from typing import Protocol

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class Prunable(Protocol):
    """What the pruner needs of the store (``Store.prune``)."""

    def prune(self, before: float, keep: int, chunk: int = ...) -> Deferred[int]: ...


class HistoryPruner(TimerService):
    """
    Keeps the history within ``days`` and ``max_jobs``: prunes at start and
    every ``interval`` seconds of ``clock``, in chunks so that other writes
    are never held up for long.  Stopping waits for the chunk being deleted,
    and deletes no more.
    """

    def __init__(self, store: Prunable, clock: IReactorTime, *, days: float, max_jobs: int,
                 interval: float = 3600.0) -> None:
        super().__init__(interval, self.prune)
        # TimerService's loop runs on it; ``prune`` reads the time from it.
        self.clock = clock
        self._clock = clock
        self.store = store
        self.days = days
        self.max_jobs = max_jobs
        self.interval = interval
        self._running: Deferred[int] | None = None
        self._stopping = False

    def startService(self) -> None:
        self._stopping = False
        super().startService()

    def stopService(self) -> Deferred[None]:
        self._stopping = True
        d: Deferred[None] = super().stopService()
        return d

    def prune(self) -> Deferred[int]:
        """One pruning pass; fires with the number of records deleted."""
        if self._running is not None:
            return succeed(0)
        before = self._clock.seconds() - self.days * 86400
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
