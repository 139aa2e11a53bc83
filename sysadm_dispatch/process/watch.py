"""
Noticing a command's output and its end without a thread: ``OutputReader``
reads the pipe its stdout and stderr share, ``ExitWatcher`` reaps it.

Its end is noticed through a pidfd (Linux 5.3 and later) watched by the
reactor like any other descriptor, and reaped with ``waitpid`` on that pid
only, so nobody else's child is ever reaped here.  Without pidfds the
reactor's own SIGCHLD reaping is used, the way Twisted's ``spawnProcess``
does it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import abstract
from twisted.internet import process as twisted_process
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..reactors import IProcessReactor

log = Logger()

#: Bytes asked for per read of a command's output.
READ_SIZE = 1 << 20
#: Capacity asked for a command's output pipe once it has filled the kernel's
#: default 64 KiB (which caps every read at that and costs a wakeup per
#: 64 KiB of a flood); most commands never fill it, and never pay for more.
PIPE_SIZE = 1 << 20
#: A read this big means the pipe was full.
_DEFAULT_PIPE_SIZE = 1 << 16

#: How often, at most, the fallback (no pidfd) exit watcher looks by itself.
_FALLBACK_POLL_MAX = 1.0


class OutputReader(abstract.FileDescriptor):
    """
    Reads the read end of a command's output pipe as data arrives, until
    every writer has closed it.  ``on_data(bytes)`` and ``on_closed()`` are
    called on the reactor thread.
    """

    def __init__(
        self, reactor: IProcessReactor, fd: int, on_data: Callable[[bytes], None], on_closed: Callable[[], None]
    ) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.on_data = on_data
        self.on_closed = on_closed
        self._grown = False
        self.startReading()

    @property
    def open(self) -> bool:
        return self.fd >= 0

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> object:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None
        except InterruptedError:
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        if len(data) >= _DEFAULT_PIPE_SIZE and not self._grown:
            self._grow()
        self.on_data(data)
        return None

    def _grow(self) -> None:
        """The command fills its pipe: give it room for ``PIPE_SIZE`` bytes between reads."""
        self._grown = True
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over the user's pipe quota: the default size works too

    def drain(self) -> bool:
        """
        Read what the pipe holds now, without waiting; True if that reached
        the end (no writer is left), and then the reader is closed.
        """
        while self.fd >= 0:
            try:
                data = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                self.close()
                return True
            if not data:
                self.close()
                return True
            self.on_data(data)
        return True

    def close(self) -> None:
        """Stop reading, even if a writer still holds the pipe."""
        if self.fd < 0:
            return
        self.stopReading()
        self.connectionLost(Failure(CONNECTION_DONE))

    def connectionLost(self, reason: Failure) -> None:
        if self.fd < 0:
            return
        abstract.FileDescriptor.connectionLost(self, reason)
        os.close(self.fd)
        self.fd = -1
        self.on_closed()


def _told(status: int | None) -> None:
    pass


@implementer(IReadDescriptor)
class ExitWatcher:
    """
    Calls ``on_exit(status)`` once, after reaping the child ``pid`` (its
    ``waitpid`` status; None if something else reaped it first).
    """

    def __init__(self, reactor: IProcessReactor, pid: int, on_exit: Callable[[int | None], None]) -> None:
        self.reactor = reactor
        self.pid = pid
        self.on_exit = on_exit
        self.done = False
        self._fd = -1
        self._poll: Any = None
        self._poll_delay = 0.01
        #: How the exit is noticed: "pidfd", or "reap" (the fallback).
        self.kind = "pidfd"
        try:
            self._fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self.kind = "reap"
            # No pidfd (old kernel, or no descriptor left): the reactor's
            # SIGCHLD handling reaps registered pids, and a slow poll covers
            # a reactor run without signal handlers.
            twisted_process.registerReapProcessHandler(pid, self)
            if not self.done:
                self._schedule_poll()
        else:
            reactor.addReader(self)

    # IReadDescriptor (the pidfd becomes readable when the process exits).

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        self.reapProcess()

    def connectionLost(self, reason: Failure) -> None:
        self._close_fd()

    def logPrefix(self) -> str:
        return "sysadm-dispatch-exit"

    # Twisted's reap handler interface (the fallback).

    def reapProcess(self) -> None:
        """Reap the process if it has exited; never blocks."""
        if self.done:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            log.warn("process {pid} was reaped by someone else; its exit status is unknown", pid=self.pid)
            self._ended(None)
            return
        if pid == 0:
            return
        self._ended(status)

    def processEnded(self, status: int) -> None:
        self._ended(status)

    def _ended(self, status: int | None) -> None:
        if self.done:
            return
        self.done = True
        if self._fd >= 0:
            self.reactor.removeReader(self)
            self._close_fd()
        elif twisted_process.reapProcessHandlers.get(self.pid) is self:
            twisted_process.unregisterReapProcessHandler(self.pid, self)
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
        # Told once: the watcher no longer refers to whoever was told.
        on_exit, self.on_exit = self.on_exit, _told
        on_exit(status)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _schedule_poll(self) -> None:
        self._poll = self.reactor.callLater(self._poll_delay, self._polled)
        self._poll_delay = min(self._poll_delay * 2, _FALLBACK_POLL_MAX)

    def _polled(self) -> None:
        self._poll = None
        self.reapProcess()
        if not self.done:
            self._schedule_poll()
