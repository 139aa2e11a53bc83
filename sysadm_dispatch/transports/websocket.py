"""
The WebSocket transport: one JSON request per frame, replies in the order
the requests arrived, and the events each connection subscribed to.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger

from ..api.router import Router, RPCError, Session, error_reply
from ..core.events import Event, EventBatch, EventHub, Subscription
from .bounded import BoundedServerProtocol
from .limits import ConnectionCounter, SessionTimer, client_address, peer_host
from .outbox import Outbox

log = Logger()

#: Requests that may wait behind a login on one connection.
MAX_HELD = 1000


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 5.2) holding ``payload``, as a server sends: framed by Autobahn."""
    return PreparedMessage(payload, isBinary=False, applyMask=False, doNotCompress=True).payloadHybi


def _prepared(event: Event, factory: WebSocketServerFactory) -> bytes:
    """The event's frame, prepared once for every connection that sends it."""
    frame: bytes | None = event.cache.get("websocket")
    if frame is None:
        frame = event.cache["websocket"] = factory.prepareMessage(event.frame, doNotCompress=True).payloadHybi
    return frame


#: One encoder for every reply (``json.dumps`` with options builds one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _encode(message: dict[str, Any]) -> bytes:
    return _ENCODER.encode(message).encode()


class _Slot:
    """The place of one reply in the connection's order; ``fill`` is the router's continuation."""

    __slots__ = ("protocol", "ready", "reply")

    def __init__(self, protocol: DispatchServerProtocol) -> None:
        self.protocol = protocol
        self.ready = False
        self.reply: dict[str, Any] | None = None

    def fill(self, reply: dict[str, Any] | None) -> None:
        self.ready = True
        self.reply = reply
        try:
            self.protocol._flush()
        except Exception:
            log.failure("sending a reply failed")


class DispatchServerProtocol(BoundedServerProtocol):
    """One client connection: its session, its pending replies, its subscriptions."""

    factory: DispatchServerFactory

    def __init__(self) -> None:
        super().__init__()
        self.outbox: Outbox | None = None
        self.session = Session(peer="")
        self._replies: deque[_Slot] = deque()
        self._held: deque[bytes] | None = None
        self._held_bytes = 0
        self._subscriptions: dict[str, Subscription] = {}
        self._timer: SessionTimer | None = None
        self._counted = False

    # Connection life.

    def connectionMade(self) -> None:
        # Autobahn's own attempt at this runs before the protocol has its
        # options and fails silently; without it an event written right
        # after a reply waits for the client's delayed ACK (about 40 ms).
        try:
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        except (AttributeError, OSError):
            pass  # not TCP (a UNIX socket, say)
        super().connectionMade()

    def onConnect(self, request: ConnectionRequest) -> None:
        factory = self.factory
        try:
            transport: Any = self.transport
            forwarded = request.headers.get("x-forwarded-for") if factory.trust_proxy else None
            address = client_address(peer_host(transport.getPeer()), forwarded, factory.trust_proxy)
            self.session = Session(peer=address, events=self, transport="websocket")
        except Exception:
            log.failure("onConnect failed")
            raise
        if not factory.connections.acquire(address):
            limit = factory.connections.limit
            log.info("refused a websocket connection from {peer}: it already has {limit}", peer=address, limit=limit)
            raise ConnectionDeny(429, f"too many connections from {address} (limit {limit})")
        self._counted = True

    def onOpen(self) -> None:
        log.debug("websocket connection from {peer}", peer=self.session.peer)
        self.outbox = Outbox(self, self.factory.max_backlog_bytes, self.factory.backlog_grace,
                              self.factory.router.dispatcher.reactor)
        self.registerProducer(self.outbox, True)
        factory = self.factory
        factory.open_protocols.add(self)
        self._timer = SessionTimer(
            factory.router.dispatcher.reactor, idle=factory.idle_timeout, auth=factory.auth_timeout,
            authenticated=lambda: self.session.user is not None, close=self._timed_out,
        )
        self._timer.start()

    def _timed_out(self, code: int, reason: str) -> None:
        log.info("closing websocket connection from {peer}: {reason}", peer=self.session.peer, reason=reason)
        normal = code == WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL
        self.factory.dropped["idle" if normal else "auth_timeout"] += 1
        if normal:
            self.sendClose(code, reason)
        else:
            # sendClose takes only application codes; 1008 is the standard's own.
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)

    def onPing(self, payload: bytes) -> None:
        if self._timer is not None:
            self._timer.activity()
        super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.open_protocols.discard(self)
        if self._timer is not None:
            self._timer.stop()
        if self._counted:
            self._counted = False
            self.factory.connections.release(self.session.peer)
        for subscription in self._subscriptions.values():
            subscription.cancel()
        self._subscriptions.clear()
        self._replies.clear()
        self._held = None

    # Messages (their size bounded while they arrive: see bounded.py).

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        if self._timer is not None:
            self._timer.activity()

    def message_limit(self) -> int:
        """The largest message accepted now: small until the connection has logged in."""
        limit = self.factory.router.max_message_bytes
        if self.session.user is None:
            return min(limit, self.factory.max_unauthenticated_bytes)
        return limit

    def message_refused(self, size: int, limit: int) -> None:
        before_login = " before login" if limit < self.factory.router.max_message_bytes else ""
        e = RPCError(413, f"the message is at least {size} bytes, more than the limit of {limit}{before_login}")
        self._answer_now(error_reply("rpc", "", e))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._held is not None:
            # A login is under way: what follows it waits, to run as its user.
            if len(self._held) >= MAX_HELD or self._held_bytes + len(payload) > self.factory.max_unauthenticated_bytes:
                e = RPCError(503, f"more than {MAX_HELD} requests or {self.factory.max_unauthenticated_bytes} bytes "
                             "are waiting for a login to finish")
                self._answer_now(error_reply("rpc", "", e))
            else:
                self._held.append(payload)
                self._held_bytes += len(payload)
            return
        # The slot keeps the reply's place before the router may answer.
        d = self.factory.router.answer_bytes(self.session, payload, self._slot().fill)
        if self.session.logging_in:
            # A login still under way (one that ended at once is counted out already).
            self._held = deque()
            d.addBoth(self._release_held)

    def _release_held(self, result: object) -> object:
        held, self._held = self._held, None
        self._held_bytes = 0
        while held:
            self.onMessage(held.popleft(), False)
            if self._held is not None:
                # Another login: the rest waits behind that one.
                self._held.extend(held)
                break
        return result

    def _slot(self) -> _Slot:
        slot = _Slot(self)
        self._replies.append(slot)
        return slot

    def _answer_now(self, reply: dict[str, Any]) -> None:
        self._slot().fill(reply)

    def _flush(self) -> None:
        # Replies leave in the order their requests arrived.
        while self._replies and self._replies[0].ready:
            reply = self._replies.popleft().reply
            if reply is not None:
                self._queue_out(self.factory.prepareMessage(_encode(reply), doNotCompress=True).payloadHybi)

    # Events.

    def subscribe(self, name: str) -> None:
        if name not in self._subscriptions:
            self._subscriptions[name] = self.factory.events.subscribe(name, self._events, batched=True)

    def unsubscribe(self, name: str) -> None:
        subscription = self._subscriptions.pop(name, None)
        if subscription is not None:
            subscription.cancel()

    def _events(self, batch: EventBatch) -> None:
        frames = batch.cache.get("websocket")
        if frames is None:
            # Encoded and framed once, for every subscriber: one write each.
            frames = batch.cache["websocket"] = b"".join(_prepared(event, self.factory) for event in batch.events)
        self._queue_out(frames)

    # Writing, through the outbox.

    def _queue_out(self, frame: bytes) -> None:
        if self.state != self.STATE_OPEN or self.outbox is None:
            return
        self.outbox.send(frame)

    def write_out(self, frame: bytes) -> None:
        if self.state != self.STATE_OPEN:
            return
        # What sendPreparedMessage does with a prepared frame (the factory
        # accepts no compression offer, so frames go out as prepared, and
        # nothing here sends in Autobahn's synchronous mode, so its send
        # queue stays empty), less the arguments of a debug log line that
        # cost a fifth of a busy reactor's time.  Both conditions are pinned
        # by tests/unit/test_websocket_memory.py.
        transport: Any = self.transport
        transport.write(frame)

    def revoked(self) -> None:
        """Its user's password or role changed, or the user is gone: the session ends now."""
        name = self.session.user.name if self.session.user is not None else ""
        log.info("ended the session of {username} from {peer}: password or role changed, or user removed",
                 username=name, peer=self.session.peer)
        for subscription in self._subscriptions.values():
            subscription.cancel()
        self._subscriptions.clear()
        self.session.user = None
        self.session.token = None
        e = RPCError(401, f"the session of user {name!r} has ended: its password or role changed, or the user "
                          "was removed; log in again")
        self._answer_now(error_reply("rpc", "", e))

    def too_slow(self, why: str) -> None:
        log.warn(
            "closing websocket connection from {peer}: {why}; the client is not reading fast enough",
            peer=self.session.peer, why=why,
        )
        self.factory.dropped["slow_consumer"] += 1
        for subscription in self._subscriptions.values():
            subscription.cancel()
        self._subscriptions.clear()
        # The close frame may never be read; autobahn drops the connection
        # when the closing handshake times out.
        # (sendClose only takes application codes; 1008 is the standard's own.)
        self.sendCloseFrame(code=WebSocketProtocol.CLOSE_STATUS_CODE_POLICY_VIOLATION,
                            reasonUtf8=b"too slow: backlog over limit", isReply=False)


class DispatchServerFactory(WebSocketServerFactory):
    protocol = DispatchServerProtocol  # type: ignore[assignment]

    #: Seconds without a message from the client before it is closed (0: never).
    idle_timeout = 1800.0
    #: Seconds a connection may stay unauthenticated before it is closed (0: never).
    auth_timeout = 30.0
    #: Believe X-Forwarded-For (its last entry) for the client's address.
    trust_proxy = False
    #: Largest message accepted before the connection has logged in.
    max_unauthenticated_bytes = 64 << 10
    #: Seconds the backlog of a client may stay above ``max_backlog_bytes`` before it is dropped.
    backlog_grace = 5.0
    _connections: ConnectionCounter | None = None

    @property
    def connections(self) -> ConnectionCounter:
        """Open connections per client address (at most 2000 each unless ``guard_connections`` says otherwise)."""
        if self._connections is None:
            self._connections = ConnectionCounter(2000)
        return self._connections

    def guard_connections(
        self,
        *,
        idle_timeout: float = 1800.0,
        auth_timeout: float = 30.0,
        max_connections_per_address: int = 2000,
        trust_proxy: bool = False,
        max_unauthenticated_bytes: int = 64 << 10,
    ) -> None:
        """Set the per-connection limits (see docs/security.rst)."""
        self.max_unauthenticated_bytes = max_unauthenticated_bytes
        self.idle_timeout = idle_timeout
        self.auth_timeout = auth_timeout
        self.trust_proxy = trust_proxy
        self._connections = ConnectionCounter(max_connections_per_address)

    def __init__(
        self, router: Router, events: EventHub, url: str | None = None, *, max_backlog_bytes: int = 4 << 20,
        backlog_grace: float = 5.0,
    ) -> None:
        super().__init__(url)
        self.router = router
        self.events = events
        #: Open connections, to end the sessions of users whose password or role changed.
        self.open_protocols: set[DispatchServerProtocol] = set()
        router.auth.revocation_observers.append(self._users_changed)
        #: Bytes that may wait for one slow client (for ``backlog_grace`` seconds) before it is disconnected.
        self.max_backlog_bytes = max_backlog_bytes
        self.backlog_grace = backlog_grace
        #: Connections closed by the server, by reason: ``slow_consumer``,
        #: ``idle``, ``auth_timeout`` (for the metrics).
        self.dropped: Counter[str] = Counter()
        # Size limits are enforced per message by the protocol (413, and the
        # connection stays open), not by closing the connection.
        self.setProtocolOptions(
            maxMessagePayloadSize=0, maxFramePayloadSize=0, closeHandshakeTimeout=2
        )


    def _users_changed(self, names: set[str]) -> None:
        for protocol in list(self.open_protocols):
            user = protocol.session.user
            if user is not None and user.name in names:
                protocol.revoked()


def make_websocket_factory(
    router: Router, *, max_backlog_bytes: int = 4 << 20, backlog_grace: float = 5.0
) -> DispatchServerFactory:
    """The WebSocket server factory, to listen with on any stream endpoint."""
    return DispatchServerFactory(router, router.dispatcher.events, max_backlog_bytes=max_backlog_bytes,
                                 backlog_grace=backlog_grace)
