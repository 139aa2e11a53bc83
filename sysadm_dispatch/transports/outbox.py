"""
What waits to be written to one WebSocket client, and when that client is
too slow to keep (docs/security.rst).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer


class Writer(Protocol):
    """The connection an ``Outbox`` writes to."""

    def write_out(self, frame: bytes) -> None: ...

    def too_slow(self, why: str) -> None: ...


#: Past this many times the backlog limit, a client that has taken nothing for
#: ``STALLED_SECONDS`` is dropped at once: memory's bound against one that does not read.
HARD_BACKLOG_FACTOR = 16
STALLED_SECONDS = 1.0


@implementer(IPushProducer)
class Outbox:
    """
    What waits to be written to one client.  The transport pauses it when
    its own buffer is full; from then on messages queue here.

    Slowness is judged over time, not by one burst: a client is given up
    only when what waits for it has stayed above ``limit`` bytes for
    ``grace`` seconds on end (it is not reading, or reads slower than its
    events come), or at once past ``HARD_BACKLOG_FACTOR`` times ``limit``
    if it has taken nothing for ``STALLED_SECONDS`` (so a client that does
    not read cannot hold more memory than that).  A client that reads as
    fast as it can drains any burst well within ``grace`` and is never
    dropped, however big one burst is.
    """

    def __init__(self, protocol: Writer, limit: int, grace: float, clock: IReactorTime) -> None:
        self.protocol = protocol
        self.limit = limit
        self.grace = grace
        self.clock = clock
        self.paused = False
        self.queue: deque[bytes] = deque()
        self.size = 0
        self.overflowed = False
        self._over_since: IDelayedCall | None = None  # the call that drops the client if it stays over the limit
        self._drained_at = clock.seconds()

    def send(self, frame: bytes) -> None:
        """``frame``: a whole WebSocket frame, ready for the wire."""
        if self.overflowed:
            return
        if not self.paused and not self.queue:
            self.protocol.write_out(frame)
            return
        self.queue.append(frame)
        self.size += len(frame)
        if self.size > self.limit * HARD_BACKLOG_FACTOR and self.clock.seconds() - self._drained_at >= STALLED_SECONDS:
            self._give_up(f"more than {self.limit * HARD_BACKLOG_FACTOR} bytes waiting for it, and nothing taken "
                          f"for {STALLED_SECONDS:g} s")
        elif self.size > self.limit and self._over_since is None:
            self._over_since = self.clock.callLater(self.grace, self._still_over)

    def _still_over(self) -> None:
        self._over_since = None
        if self.size > self.limit:
            self._give_up(f"more than {self.limit} bytes waiting for it for {self.grace:g} s")

    def _give_up(self, why: str) -> None:
        self.overflowed = True
        self._clear()
        self.protocol.too_slow(why)

    def _clear(self) -> None:
        self.queue.clear()
        self.size = 0
        if self._over_since is not None:
            if self._over_since.active():
                self._over_since.cancel()
            self._over_since = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._drained_at = self.clock.seconds()
        while self.queue and not self.paused:
            frame = self.queue.popleft()
            self.size -= len(frame)
            self.protocol.write_out(frame)
        if self.size <= self.limit and self._over_since is not None:
            if self._over_since.active():
                self._over_since.cancel()
            self._over_since = None

    def stopProducing(self) -> None:
        self._clear()
