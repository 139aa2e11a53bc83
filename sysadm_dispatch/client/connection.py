"""
Talking to a server: requests with their replies, and live events.

``Connection`` is what the commands use; ``WebSocketConnection`` is the one
backend today (one WebSocket carries requests and events).  Another
transport stands beside it by providing the same four members.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime

from .config import Target
from .errors import DROPPED, NO_PERMISSION, UNAVAILABLE, ClientError, RemoteError

if TYPE_CHECKING:
    from ..reactors import IClientReactor

DEFAULT_PORT = 12150
CONNECT_TIMEOUT = 10.0
#: Pings keep an idle connection (``watch``) open past the server's idle
#: timeout, and notice a server that went away without closing.
PING_INTERVAL = 60.0
PING_TIMEOUT = 60.0

EventHandler = Callable[[dict[str, Any]], None]


class ConnectionDropped(ClientError):
    """The connection ended while something was waiting on it."""

    def __init__(self, reason: str) -> None:
        super().__init__(DROPPED, f"the connection to the server dropped: {reason}")
        self.reason = reason


class Connection(Protocol):
    """A logged-in connection to one server."""

    def call(self, name: str, args: Any, namespace: str = "rpc") -> Deferred[Any]:
        """Send one request; fires with the reply's ``args``, or fails with ``RemoteError``."""

    def on_event(self, handler: EventHandler) -> None:
        """Call ``handler`` with the ``args`` of every event this connection receives."""

    def when_lost(self) -> Deferred[str]:
        """Fires with a reason if the connection ends other than by ``close``."""

    def close(self) -> Deferred[None]:
        """End the connection politely."""


class _Protocol(WebSocketClientProtocol):
    owner: WebSocketConnection

    def onOpen(self) -> None:
        self.factory.owner.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict):
            self.factory.owner.received(message)

    def connectionLost(self, reason: Any = None) -> None:
        owner = self.factory.owner
        if reason is not None and not reason.check(ConnectionDone, ConnectionLost):
            owner.lost_reason = owner.lost_reason or _reason_text(reason.value)
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        owner = self.factory.owner
        text = reason or (f"closed with code {code}" if code else None) or self.wasNotCleanReason
        owner.closed(text or owner.lost_reason or "the connection closed")


def _reason_text(error: BaseException) -> str:
    text = str(error).strip()
    name = type(error).__name__
    if not text or text == "None":
        return name
    return " ".join(text.split())


class WebSocketConnection:
    """``Connection`` over the server's WebSocket (docs/protocol.rst)."""

    def __init__(self, reactor: IReactorTime, url: str) -> None:
        self.reactor = reactor
        self.url = url
        self.protocol: _Protocol | None = None
        self.lost_reason: str | None = None
        self._opened: Deferred[WebSocketConnection] = Deferred()
        self._replies: dict[str, Deferred[Any]] = {}
        self._handlers: list[EventHandler] = []
        self._lost: list[Deferred[str]] = []
        self._closed: list[Deferred[None]] = []
        self._lost_reason_given = False
        self._ended = False
        self._timer: Any = None
        self._closing = False
        self._n = 0
        #: The ``auth`` arguments, once logged in, to log in again with.
        self.login: dict[str, str] | None = None

    # Wiring from the protocol.

    def opened(self, protocol: _Protocol) -> None:
        self.protocol = protocol
        self._opened.callback(self)

    def received(self, message: dict[str, Any]) -> None:
        name = message.get("name")
        if message.get("namespace") == "events" and name not in ("response", "error"):
            args = message.get("args")
            if isinstance(args, dict):
                for handler in list(self._handlers):
                    handler(args)
            return
        d = self._replies.pop(str(message.get("id")), None)
        if d is None:
            return
        args = message.get("args")
        if name == "error":
            args = args if isinstance(args, dict) else {}
            d.errback(RemoteError(int(args.get("code") or 500), str(args.get("message", "error")),
                                  str(args.get("detail", ""))))
        else:
            d.callback(args)

    def closed(self, reason: str) -> None:
        if not self._opened.called:
            # The transport's own reason (a TLS error, say) says more than
            # "closed uncleanly".
            cause = self.lost_reason
            if cause and "SSL error" not in reason:
                reason = f"{cause}; {reason}"
            self._opened.errback(ClientError(UNAVAILABLE, f"cannot connect to {self.url}: {reason}"))
        replies, self._replies = self._replies, {}
        for d in replies.values():
            d.errback(ConnectionDropped(reason))
        if self._ended:
            return
        self._ended = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        waiting, self._lost = self._lost, []
        if not self._closing:
            for d in waiting:
                d.callback(reason)
        closing, self._closed = self._closed, []
        for c in closing:
            c.callback(None)

    # Connection.

    def call(self, name: str, args: Any, namespace: str = "rpc") -> Deferred[Any]:
        if self.login is None or name == "auth":
            return self._send(name, args, namespace)
        return Deferred.fromCoroutine(self._call_logged_in(name, args, namespace))

    async def _call_logged_in(self, name: str, args: Any, namespace: str) -> Any:
        try:
            return await self._send(name, args, namespace)
        except RemoteError as e:
            if e.status != 401 or self.login is None:
                raise
        # The token lapsed while the connection only listened (a long
        # follow): log in again and ask once more.
        await self._send("auth", self.login)
        return await self._send(name, args, namespace)

    def _send(self, name: str, args: Any, namespace: str = "rpc") -> Deferred[Any]:
        if self.protocol is None or self._ended:
            raise ConnectionDropped(self.lost_reason or "not connected")
        self._n += 1
        request_id = f"c{self._n}"
        d: Deferred[Any] = Deferred()
        self._replies[request_id] = d
        message = {"namespace": namespace, "name": name, "id": request_id, "args": args}
        self.protocol.sendMessage(json.dumps(message).encode())
        return d

    def on_event(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def when_lost(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        if not self._ended:
            self._lost.append(d)
        return d

    def close(self) -> Deferred[None]:
        self._closing = True
        d: Deferred[None] = Deferred()
        if self._ended or self.protocol is None:
            d.callback(None)
            return d
        self._closed.append(d)
        if self._timer is None:
            self.protocol.sendClose(1000)
            self._timer = self.reactor.callLater(2, self._abort)
        return d

    def _abort(self) -> None:
        transport: Any = self.protocol.transport if self.protocol is not None else None
        if transport is not None:
            transport.abortConnection()


def endpoint_for(reactor: IClientReactor, target: Target) -> tuple[Any, str]:
    """The client endpoint for ``target``'s URL, and the URL with its port filled in."""
    parts = urlsplit(target.url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or DEFAULT_PORT
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    if target.secure:
        endpoint = wrapClientTLS(tls_options(host, target), endpoint)
    return endpoint, url


def tls_options(host: str, target: Target) -> Any:
    try:
        from twisted.internet import ssl
    except ImportError:  # pragma: no cover (twisted always has the module)
        raise ClientError(UNAVAILABLE, "wss:// needs TLS support: install sysadm-dispatch[tls]") from None
    if not getattr(ssl, "supported", False):
        raise ClientError(UNAVAILABLE, "wss:// needs TLS support: install sysadm-dispatch[tls]")
    if target.insecure:
        return ssl.CertificateOptions()
    if target.cafile:
        try:
            with open(target.cafile, "rb") as f:
                data = f.read()
            begin = b"-----BEGIN CERTIFICATE-----"
            certificates = [ssl.Certificate.loadPEM(begin + block) for block in data.split(begin)[1:]]
        except Exception as e:
            raise ClientError(UNAVAILABLE, f"cannot read the CA file {target.cafile}: {_reason_text(e)}") from None
        if not certificates:
            raise ClientError(UNAVAILABLE, f"the CA file {target.cafile} holds no PEM certificate")
        return ssl.optionsForClientTLS(host, trustRoot=ssl.trustRootFromCertificates(certificates))
    return ssl.optionsForClientTLS(host)


async def connect(reactor: IClientReactor, target: Target) -> WebSocketConnection:
    """Open a WebSocket to ``target`` and log in; ``ClientError`` 69 or 77 when that cannot be done."""
    endpoint, url = endpoint_for(reactor, target)
    connection = WebSocketConnection(reactor, target.url)
    factory: Any = WebSocketClientFactory(url)
    factory.protocol = _Protocol
    factory.owner = connection
    factory.setProtocolOptions(
        autoPingInterval=PING_INTERVAL, autoPingTimeout=PING_TIMEOUT, openHandshakeTimeout=CONNECT_TIMEOUT,
    )
    try:
        await endpoint.connect(factory)
    except (CancelledError, TimeoutError):
        raise ClientError(UNAVAILABLE, f"cannot connect to {target.url}: no answer within "
                                       f"{CONNECT_TIMEOUT:.0f} seconds") from None
    except ClientError:
        raise
    except Exception as e:
        raise ClientError(UNAVAILABLE, f"cannot connect to {target.url}: {_reason_text(e)}") from None
    await connection._opened
    login = {"username": target.user, "password": target.password}
    try:
        await connection.call("auth", login)
    except RemoteError as e:
        await connection.close()
        raise ClientError(NO_PERMISSION, f"login as {target.user} refused: {e.detail or e.message}") from None
    except ConnectionDropped as e:
        raise ClientError(UNAVAILABLE, f"the server closed the connection at login: {e.reason}") from None
    connection.login = login
    return connection
