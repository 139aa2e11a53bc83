"""
Running under a service manager: readiness for systemd (``sd_notify``
over ``$NOTIFY_SOCKET``, for ``Type=notify``) and SIGHUP to reload.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

log = Logger()


def take_notify_socket(environ: Any = None) -> str | None:
    """
    ``$NOTIFY_SOCKET``, removed from the environment: the jobs the server
    runs must not speak for it to systemd.
    """
    environ = os.environ if environ is None else environ
    path = environ.pop("NOTIFY_SOCKET", None)
    return path or None


def sd_notify(path: str, message: str) -> bool:
    """
    Send ``message`` (``READY=1``...) to the service manager's socket at
    ``path`` (``@`` for the abstract namespace).  Never blocks; returns
    whether it was sent.
    """
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode(), address)
        return True
    except OSError as e:
        if e.errno != errno.EAGAIN:
            log.warn("cannot tell the service manager {message!r}: {error}", message=message, error=str(e))
        return False


class NotifyService(Service):
    """
    Tells systemd ``READY=1`` once every listener is bound and the jobs of
    the store are taken up, and ``STOPPING=1`` when the server begins to
    stop.
    """

    def __init__(self, path: str, ready: Callable[[], Sequence[Deferred[Any]]]) -> None:
        self.path = path
        self.ready = ready
        self.sent_ready = False

    def startService(self) -> None:
        super().startService()
        DeferredList(list(self.ready()), fireOnOneErrback=True, consumeErrors=True).addCallbacks(
            self._ready, lambda f: log.failure("the server did not become ready", f))

    def _ready(self, _: object) -> None:
        if self.running:
            self.sent_ready = sd_notify(self.path, "READY=1\nSTATUS=serving")

    def stopService(self) -> Any:
        sd_notify(self.path, "STOPPING=1")
        return super().stopService()


class ReloadService(Service):
    """
    SIGHUP: read the users file again at once and reopen the log file (for
    logrotate); SIGUSR1: rotate the log file (as twistd does).  The signal
    handler only hands the work to the reactor thread.
    """

    def __init__(self, reactor: IReactorFromThreads, reload_users: Callable[[], Any], reopen_log: Callable[[], None],
                 rotate_log: Callable[[], None] | None = None) -> None:
        self.reactor = reactor
        self.reload_users = reload_users
        self.reopen_log = reopen_log
        self.rotate_log = rotate_log
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._signalled)
        if self.rotate_log is not None:
            self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._signalled)

    def stopService(self) -> Any:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()
        return super().stopService()

    def _signalled(self, number: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload if number == signal.SIGHUP else self._rotate)

    def reload(self) -> None:
        try:
            self.reopen_log()
        except OSError as e:
            log.error("SIGHUP: cannot reopen the log file: {error}", error=str(e))
        log.info("SIGHUP: log file reopened; reading the users file again")
        try:
            d = self.reload_users()
        except Exception:
            log.failure("SIGHUP: reloading the users failed")
            return
        if isinstance(d, Deferred):
            d.addErrback(lambda f: log.failure("SIGHUP: reloading the users failed", f))

    def _rotate(self) -> None:
        if self.rotate_log is not None:
            try:
                self.rotate_log()
            except OSError as e:
                log.error("SIGUSR1: cannot rotate the log file: {error}", error=str(e))
