"""
Live updates: what a running job wrote goes out as ``running`` events,
coalesced and throttled per job (docs/protocol.rst, "running updates").
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .events import EventHub
from .job import RUNNING, Job


class LiveUpdates:
    """
    ``running`` updates, throttled per job on the leading edge: the job's
    first output, and the first after a quiet ``interval``, goes out at once
    (on the next turn of the reactor, with whatever else came in that turn);
    output that comes sooner after an update waits for the interval to end.
    """

    def __init__(self, reactor: IReactorTime, events: EventHub, interval: float) -> None:
        self.reactor = reactor
        self.events = events
        #: At most one ``running`` update per job per this many seconds.
        self.interval = interval
        self._updates: dict[str, IDelayedCall] = {}
        self._last_update: dict[str, float] = {}

    def output(self, job: Job, index: int, data: bytes) -> None:
        """
        New output of command ``index``, or (``data`` empty) the next command
        of the chain started: an update follows, with the exit codes so far
        and the command now running.
        """
        if job.id in self._updates:
            return
        last = self._last_update.get(job.id)
        delay = 0.0 if last is None else max(0.0, last + self.interval - self.reactor.seconds())
        self._updates[job.id] = self.reactor.callLater(delay, self._send, job)

    def _send(self, job: Job) -> None:
        del self._updates[job.id]
        if job.state != RUNNING or not job.has_news():
            return
        self._last_update[job.id] = self.reactor.seconds()
        self.events.publish("dispatcher", job.record(job.running_update()))
        if job.cut:
            # More than one update may carry: the rest follows on the next turn.
            self._updates[job.id] = self.reactor.callLater(0, self._send, job)

    def forget(self, job: Job) -> None:
        """The job finishes: no update of it is due any more."""
        update = self._updates.pop(job.id, None)
        if update is not None and update.active():
            update.cancel()
        self._last_update.pop(job.id, None)
