"""
Helpers for the security tests: WebSocket connections with request headers
or TLS that may be refused, log capture, and counting how often the
password store and the token store are consulted.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from conftest import WSClient, _ClientProtocol, with_timeout
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from sysadm_dispatch.ops.serverlog import event_as_json_line


class Refused(Exception):
    """The server refused the WebSocket opening handshake."""


class _Protocol(_ClientProtocol):
    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.client.not_clean_reason = self.wasNotCleanReason
        super().onClose(wasClean, code, reason)


async def ws_connect(
    port: int, *, headers: dict[str, str] | None = None, tls: Any = None, host: str = "127.0.0.1", path: str = "/"
) -> WSClient:
    """
    A ``WSClient`` connected to ``path`` with extra request ``headers`` and,
    with ``tls`` (client TLS options), over TLS.  Raises ``Refused`` (with the
    reason) if the handshake is refused or the connection is lost before it
    opens.
    """
    client = WSClient()
    client.not_clean_reason = None  # type: ignore[attr-defined]
    factory = WebSocketClientFactory(f"{'wss' if tls else 'ws'}://{host}:{port}{path}", headers=headers or {})
    factory.protocol = _Protocol
    factory.opened = Deferred()
    factory.client = client
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    await with_timeout(endpoint.connect(factory))
    result = await with_timeout(DeferredList([factory.opened, client.lost], fireOnOneCallback=True,
                                             consumeErrors=True))
    value, index = result
    if index == 1:
        raise Refused(str(client.not_clean_reason))  # type: ignore[attr-defined]
    client.protocol = value
    return client


@contextmanager
def captured_log() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted meanwhile (twisted.logger and legacy log.msg alike)."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def log_text(events: list[dict[str, Any]]) -> str:
    """
    The events formatted, the repr of each one (so secrets in any field are
    seen) and each as the JSON line ``--log-format json`` writes.
    """
    return "\n".join(f"{formatEvent(event)} {event!r} {event_as_json_line(event)}" for event in events)


class Counter:
    """Wraps ``obj.name`` to count the calls, passing them through."""

    def __init__(self, obj: Any, name: str) -> None:
        self.calls = 0
        original = getattr(obj, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        setattr(obj, name, counted)


def run_root(*argv: str, stdin: str | None = None) -> None:
    """Run a system administration command (the tests that need it run as root)."""
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


class SyncPool:
    """A "thread pool" that runs the work at once, on the calling thread, and counts it."""

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(self, onResult: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        try:
            result = func(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class SyncClock(Clock):
    """A ``Clock`` with a synchronous thread pool: password checks finish before the call returns."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = SyncPool()

    def getThreadPool(self) -> SyncPool:
        return self.pool

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


def cheap_hash(password: str, salt: bytes = b"0123456789abcdef") -> str:
    """A hash in ``hash_password``'s format with tiny scrypt costs, so tests stay fast."""
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2, r=1, p=1, dklen=32)
    return f"scrypt$2$1$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def alice_and_bob(case: Any, clock: Any) -> Any:
    """
    A loaded ``UsersFileChecker`` over a users file of its own (removed when
    ``case`` cleans up): ``alice`` (full, password ``pw-a``) and ``bob``
    (read, ``pw-b``).
    """
    import os
    import shutil
    import tempfile

    from sysadm_dispatch.auth.checker import UsersFileChecker
    from sysadm_dispatch.auth.users import FULL, READ, UserEntry, write_users

    directory = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, directory)
    path = os.path.join(directory, "users")
    write_users(path, {"alice": UserEntry("alice", FULL, cheap_hash("pw-a")),
                       "bob": UserEntry("bob", READ, cheap_hash("pw-b"))})
    checker = UsersFileChecker(clock, path)
    checker.load()
    return checker
