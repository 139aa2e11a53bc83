"""
Being a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): a job's orphans
are re-parented to the server rather than to init, so they stay within
reach; the server reaps them when they exit, one known pid at a time (never
a blanket wait), and ends those no job claimed when it stops.  See
docs/processes.rst.
"""

from __future__ import annotations

import ctypes
import signal

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from .procs import ProcessTracker
from .proctable import JobTree

log = Logger()

PR_SET_CHILD_SUBREAPER = 36
#: How often a subreaper server reaps orphans that exited, at the latest.
REAP_INTERVAL = 2.0


def become_subreaper(tracker: ProcessTracker) -> bool:
    """
    Have orphaned descendants re-parented to this process rather than to
    init.  Only for a process whose children are all started by ``tracker``
    or by Twisted's ``spawnProcess``: orphans that exit are reaped here, one
    known pid at a time.
    """
    if tracker.subreaper:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.warn("cannot become a child subreaper; orphaned job processes are found by their marker only")
        return False
    tracker.subreaper = True
    return True


def stop_orphans(tracker: ProcessTracker, grace: float) -> Deferred[None]:
    """
    End the orphans no job claimed, and their descendants: SIGTERM, then
    SIGKILL after ``grace`` seconds; fires once they are gone.
    """
    if not tracker.subreaper:
        return succeed(None)
    strays = tracker.strays()
    if not strays:
        return succeed(None)
    tree = JobTree("\0", start=min(info.start for info in strays))
    tree.members.update({info.pid: info.start for info in strays})
    log.info("stopping {count} orphaned processes of finished jobs", count=len(strays))
    done: Deferred[None] = Deferred()
    reactor = tracker.reactor
    deadline = reactor.seconds() + grace

    def check(alive: int, sig: int | None) -> None:
        if not alive:
            done.callback(None)
            return
        if sig != signal.SIGKILL and reactor.seconds() >= deadline:
            tracker.sweep(tree, signal.SIGKILL).addCallback(check, signal.SIGKILL)
            return
        if sig == signal.SIGKILL and reactor.seconds() >= deadline + 2.0:
            log.warn("{count} orphaned processes survived SIGKILL", count=alive)
            done.callback(None)
            return
        reactor.callLater(0.05, lambda: tracker.sweep(tree).addCallback(check, sig))

    tracker.sweep(tree, signal.SIGTERM).addCallback(check, signal.SIGTERM)
    return done


class SubreaperService(MultiService):
    """
    Makes the server a child subreaper while it runs; its ``TimerService``
    child reaps orphans that exited.  (The dispatcher's ``stopService`` ends
    the orphans still alive, after the running jobs, through
    ``stop_orphans``.)
    """

    name = "subreaper"

    def __init__(self, tracker: ProcessTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.reaping = TimerService(REAP_INTERVAL, tracker.reap_strays)
        self.reaping.clock = tracker.reactor
        self.reaping.setServiceParent(self)

    def startService(self) -> None:
        become_subreaper(self.tracker)
        super().startService()
