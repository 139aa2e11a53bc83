"""
Guards at the door: who is knocking, how many connections they hold, how
long a connection may sit idle, and accepting calmly when descriptors run
out.  Bookkeeping on an injected clock; the transports decide what to
answer.  The policy is described in docs/security.rst.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


def peer_host(address: Any) -> str:
    """The host of a transport's peer address (``"unix"`` for a UNIX socket, which has none)."""
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else "unix"


def client_address(peer: str, forwarded_for: str | None, trust_proxy: bool) -> str:
    """
    The address to count a client by.  Only with ``trust_proxy`` is the
    ``X-Forwarded-For`` header believed, and then only its last entry: the
    one the proxy itself added (earlier entries come from the client and can
    say anything).
    """
    if not trust_proxy or not forwarded_for:
        return peer
    last = forwarded_for.rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return peer


class ConnectionCounter:
    """Open connections per client address, refused beyond ``limit`` (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if self.limit and count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def count(self, address: str) -> int:
        return self._open.get(address, 0)

    def total(self) -> int:
        """Open connections from every address."""
        return sum(self._open.values())


#: WebSocket close codes (RFC 6455), as Autobahn names them: an idle connection
#: is closed normally; one that never authenticated broke the server's policy.
CLOSE_NORMAL = WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL
CLOSE_POLICY_VIOLATION = WebSocketProtocol.CLOSE_STATUS_CODE_POLICY_VIOLATION


class SessionTimer:
    """
    The two clocks of one connection: it is closed after ``idle`` seconds
    without a message from the client, and after ``auth`` seconds if it has
    not authenticated by then.  Either may be 0 (never).
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        idle: float,
        auth: float,
        authenticated: Callable[[], bool],
        close: Callable[[int, str], None],
    ) -> None:
        self.clock = clock
        self.idle = idle
        self.auth = auth
        self.authenticated = authenticated
        self.close = close
        self._last = clock.seconds()
        self._idle_call: IDelayedCall | None = None
        self._auth_call: IDelayedCall | None = None

    def start(self) -> None:
        self._last = self.clock.seconds()
        if self.idle > 0:
            self._idle_call = self.clock.callLater(self.idle, self._check_idle)
        if self.auth > 0:
            self._auth_call = self.clock.callLater(self.auth, self._check_auth)

    def activity(self) -> None:
        """The client sent something."""
        self._last = self.clock.seconds()

    def stop(self) -> None:
        for call in (self._idle_call, self._auth_call):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._auth_call = None

    def _check_idle(self) -> None:
        # Rescheduled from the last activity rather than reset on every
        # message, which would cost a timer operation per message.
        due = self._last + self.idle
        now = self.clock.seconds()
        if now < due:
            self._idle_call = self.clock.callLater(due - now, self._check_idle)
            return
        self._idle_call = None
        self.stop()
        self.close(CLOSE_NORMAL, f"idle: no message for {self.idle:g} seconds")

    def _check_auth(self) -> None:
        self._auth_call = None
        if not self.authenticated():
            self.stop()
            self.close(CLOSE_POLICY_VIOLATION, f"not authenticated within {self.auth:g} seconds")


#: accept() errors that mean "no descriptor (or memory) for a new connection now".
_STARVED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _CalmAccept:
    """
    A listening socket whose ``accept`` turns running out of descriptors
    into "nothing to accept" for Twisted's port, which would otherwise log
    a line and try again at once, thousands of times a second.  Instead the
    port stops accepting for ``pause`` seconds, and a line is logged at most
    once per ``report_every`` seconds, with how often it happened since.
    """

    def __init__(self, sock: Any, port: Any, clock: IReactorTime, pause: float, report_every: float) -> None:
        self._sock = sock
        self._port = port
        self._clock = clock
        self._pause = pause
        self._report_every = report_every
        self._paused = False
        self._unreported = 0
        self._reported_at: float | None = None

    def accept(self) -> Any:
        try:
            return self._sock.accept()
        except OSError as e:
            if e.errno not in _STARVED:
                raise
            self._starved(e)
            raise BlockingIOError(errno.EAGAIN, "paused: no descriptors") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def _starved(self, e: OSError) -> None:
        self._unreported += 1
        now = self._clock.seconds()
        if self._reported_at is None or now - self._reported_at >= self._report_every:
            log.error(
                "cannot accept connections on {where}: {reason} ({count} time(s) since the last such line); "
                "pausing accepts for {pause:g} s at a time; raise the descriptor limit (ulimit -n, "
                "LimitNOFILE=) or lower the connection limits",
                where=self._where(), reason=errno.errorcode.get(e.errno or 0, str(e)), count=self._unreported,
                pause=self._pause,
            )
            self._reported_at = now
            self._unreported = 0
        if not self._paused:
            self._paused = True
            self._port.stopReading()
            self._clock.callLater(self._pause, self._resume)

    def _where(self) -> str:
        try:
            host = self._port.getHost()
            return f"{host.host}:{host.port}"
        except Exception:
            return "a listener"

    def _resume(self) -> None:
        self._paused = False
        if getattr(self._port, "connected", False):
            self._port.startReading()


def calm_accept(port: Any, clock: IReactorTime, *, pause: float = 0.1, report_every: float = 60.0) -> None:
    """Make ``port`` (a listening port of Twisted's) pause, not spin, when out of descriptors."""
    sock = getattr(port, "socket", None)
    if sock is None or isinstance(sock, _CalmAccept) or not hasattr(sock, "accept"):
        return
    port.socket = _CalmAccept(sock, port, clock, pause, report_every)
