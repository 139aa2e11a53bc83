"""
Killed pending jobs, finished a slice per turn of the reactor: finishing
10,000 at once held other requests for 2 s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .job import Job

#: Pending jobs a kill finishes in one go: the rest on the next turns.
KILLS_PER_TURN = 128


class PendingKills:
    """
    Pending jobs that were killed (they left their queues already) wait
    here for ``finish(job)``; each kill request gets a Deferred that fires
    once every job it killed is finished.
    """

    def __init__(self, reactor: IReactorTime, finish: Callable[[Job], None]) -> None:
        self.reactor = reactor
        self.finish = finish
        self._to_finish: deque[Job] = deque()
        self._done = 0
        #: (how many must be finished for it, the kill request's Deferred), in order.
        self._waits: deque[tuple[int, Deferred[None]]] = deque()
        self._call: IDelayedCall | None = None
        self._finishing = False
        self.stopping = False

    def add(self, jobs: Sequence[Job]) -> Deferred[None]:
        """Finish these killed pending jobs (``KILLS_PER_TURN`` now); fires once all of them are."""
        self._to_finish.extend(jobs)
        done: Deferred[None] = Deferred()
        self._waits.append((self._done + len(self._to_finish), done))
        self.run()
        return done

    def run(self, budget: int | None = KILLS_PER_TURN) -> None:
        """Finish ``budget`` of the waiting jobs now (all if None), the rest on the next turns."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._finishing:
            return
        self._finishing = True
        try:
            while self._to_finish and (budget is None or budget > 0):
                job = self._to_finish.popleft()
                self._done += 1
                if budget is not None:
                    budget -= 1
                self.finish(job)
                while self._waits and self._waits[0][0] <= self._done:
                    self._waits.popleft()[1].callback(None)
        finally:
            self._finishing = False
        if self._to_finish and not self.stopping:
            self._call = self.reactor.callLater(0, self.run)

    def stop(self) -> None:
        """The server stops: every killed pending job finishes now (recorded as killed)."""
        self.stopping = True
        self.run(None)
