"""
The WebSocket transport: one JSON request per frame, replies in the order
the requests arrived, and the events each connection subscribed to.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .events import Event, EventHub, Subscription
from .rpc import Router, RPCError, Session, error_reply

log = Logger()

CLOSE_POLICY_VIOLATION = 1008


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


class _Slot:
    __slots__ = ("ready", "reply")

    def __init__(self) -> None:
        self.ready = False
        self.reply: dict[str, Any] | None = None


class DispatchServerProtocol(WebSocketServerProtocol):
    """One client connection: its session, its pending replies, its subscriptions."""

    factory: DispatchServerFactory

    def __init__(self) -> None:
        super().__init__()
        self.session = Session(peer="")
        self._replies: deque[_Slot] = deque()
        self._subscriptions: dict[str, Subscription] = {}
        self._size = 0
        self._too_big = False

    # Connection life.

    def onConnect(self, request: ConnectionRequest) -> None:
        try:
            transport: Any = self.transport
            self.session = Session(peer=transport.getPeer().host, events=self)
        except Exception:
            log.failure("onConnect failed")
            raise

    def onOpen(self) -> None:
        log.debug("websocket connection from {peer}", peer=self.session.peer)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        for subscription in self._subscriptions.values():
            subscription.cancel()
        self._subscriptions.clear()
        self._replies.clear()

    # Messages, with the size limit applied while they arrive so an
    # oversized one is never held in memory whole.

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._size = 0
        self._too_big = False

    def onMessageFrameData(self, payload: bytes) -> None:
        self._size += len(payload)
        if self._too_big or self._size > self.factory.router.max_message_bytes:
            self._too_big = True
            self.frame_data = []
            self.message_data = []
            return
        super().onMessageFrameData(payload)

    def onMessageFrameEnd(self) -> None:
        if self._too_big:
            self.frame_data = None  # type: ignore[assignment]
            return
        super().onMessageFrameEnd()

    def onMessageEnd(self) -> None:
        if not self._too_big:
            super().onMessageEnd()
            return
        self.message_data = None  # type: ignore[assignment]
        limit = self.factory.router.max_message_bytes
        e = RPCError(413, f"the message is at least {self._size} bytes, more than the limit of {limit}")
        self._reply_when(_fired(error_reply("rpc", "", e)))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._reply_when(self.factory.router.handle_bytes(self.session, payload))

    def _reply_when(self, d: Deferred[dict[str, Any] | None]) -> None:
        slot = _Slot()
        self._replies.append(slot)

        def ready(reply: dict[str, Any] | None) -> None:
            slot.ready = True
            slot.reply = reply
            self._flush()

        d.addCallback(ready).addErrback(lambda f: log.failure("reply failed", f))

    def _flush(self) -> None:
        # Replies leave in the order their requests arrived.
        while self._replies and self._replies[0].ready:
            reply = self._replies.popleft().reply
            if reply is not None and self.state == self.STATE_OPEN:
                self.sendMessage(_encode(reply))

    # Events.

    def subscribe(self, name: str) -> None:
        if name not in self._subscriptions:
            self._subscriptions[name] = self.factory.events.subscribe(name, self._event)

    def unsubscribe(self, name: str) -> None:
        subscription = self._subscriptions.pop(name, None)
        if subscription is not None:
            subscription.cancel()

    def _event(self, event: Event) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(event.frame)


class DispatchServerFactory(WebSocketServerFactory):
    protocol = DispatchServerProtocol  # type: ignore[assignment]

    def __init__(self, router: Router, events: EventHub, url: str | None = None) -> None:
        super().__init__(url)
        self.router = router
        self.events = events
        # Size limits are enforced per message by the protocol (413, and the
        # connection stays open), not by closing the connection.
        self.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)


def make_websocket_factory(router: Router) -> DispatchServerFactory:
    """The WebSocket server factory, to listen with on any stream endpoint."""
    return DispatchServerFactory(router, router.dispatcher.events)


def _fired(value: Any) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.callback(value)
    return d
