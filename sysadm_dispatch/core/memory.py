"""
Giving memory back to the system after large frees.

The C library's allocator keeps memory freed by the program for its own
reuse: after a burst of jobs with megabytes of output each, the server's
resident memory stayed near its peak (100 jobs of 1 MB: about +275 MB for
good).  ``malloc_trim`` returns the free pages of every arena; it costs a
few milliseconds, so it runs off the reactor thread, once enough output was
let go, once a burst of finished jobs is over (by then their records are
written and dropped too).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import cast

from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

log = Logger()

#: Bytes of job output let go after which memory is given back.
TRIM_AFTER_BYTES = 16 << 20
#: Seconds after the last of such output is let go until it is (the records
#: being written meanwhile are dropped by then) ...
TRIM_DELAY = 1.0
#: ... but no later than this many seconds after the threshold was passed.
TRIM_MAX_DELAY = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (another C library)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class Trimmer:
    """Counts output let go; past ``threshold`` bytes, trims the allocator ``delay`` seconds later."""

    def __init__(self, reactor: IReactorTime, *, threshold: int = TRIM_AFTER_BYTES, delay: float = TRIM_DELAY,
                 max_delay: float = TRIM_MAX_DELAY, trim: Callable[[int], int] | None = None,
                 in_thread: bool = True) -> None:
        self.reactor = reactor
        self.threshold = threshold
        self.delay = delay
        self.max_delay = max_delay
        self.trim = trim if trim is not None else _malloc_trim()
        self.in_thread = in_thread
        self.trims = 0
        self._released = 0
        self._call: IDelayedCall | None = None
        self._due = 0.0

    def released(self, nbytes: int) -> None:
        if self.trim is None:
            return
        self._released += nbytes
        if self._released < self.threshold:
            return
        now = self.reactor.seconds()
        if self._call is None:
            self._due = now + self.max_delay
            self._call = self.reactor.callLater(self.delay, self._trim)
        elif self._call.active():
            # Still going: later, when it is over (or at the latest by ``_due``).
            self._call.reset(max(0.0, min(self.delay, self._due - now)))

    def _trim(self) -> None:
        self._call = None
        self._released = 0
        self.trims += 1
        assert self.trim is not None
        if not self.in_thread or not hasattr(self.reactor, "getThreadPool"):
            self.trim(0)  # a reactor without threads (a test's clock): here, at once
            return
        threads = cast(IReactorThreads, self.reactor)  # it has a thread pool: it is a reactor's
        d = deferToThreadPool(threads, threads.getThreadPool(), self.trim, 0)
        d.addErrback(lambda f: log.failure("giving memory back to the system failed", f))

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
