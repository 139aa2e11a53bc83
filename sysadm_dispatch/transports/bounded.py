"""
A WebSocket server protocol that bounds what one client can make the
server hold: the opening handshake, and each message, judged while its
frames arrive so that an oversized one is never held whole.

This is the one place that reaches into Autobahn below its message API:
the frame-level hooks (``onMessageBegin`` ... ``onMessageEnd``) and the
``frame_data`` / ``message_data`` buffers that Autobahn's own versions of
them fill.  tests/unit/test_websocket_memory.py pins that coupling: an
oversized message is answered 413 and the connection goes on serving.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.logger import Logger

from .limits import peer_host

log = Logger()

#: Bytes of an opening handshake (its HTTP request) taken before the connection is dropped.
MAX_HANDSHAKE_BYTES = 64 << 10


class BoundedServerProtocol(WebSocketServerProtocol):
    """Subclasses say how big a message may be now, and how to refuse a bigger one."""

    def __init__(self) -> None:
        super().__init__()
        self._size = 0
        self._too_big = False
        self._handshake_bytes = 0

    def message_limit(self) -> int:
        raise NotImplementedError

    def message_refused(self, size: int, limit: int) -> None:
        """A message of at least ``size`` bytes, over ``limit``, was dropped unread."""
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        if self.state == self.STATE_CONNECTING:
            # An opening handshake that never ends must not grow without bound.
            self._handshake_bytes += len(data)
            if self._handshake_bytes > MAX_HANDSHAKE_BYTES:
                transport: Any = self.transport
                log.info("dropping a connection from {peer}: its handshake passed {limit} bytes",
                         peer=peer_host(transport.getPeer()), limit=MAX_HANDSHAKE_BYTES)
                transport.abortConnection()
                return
        super().dataReceived(data)

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._size = 0
        self._too_big = False

    def onMessageFrameData(self, payload: bytes) -> None:
        self._size += len(payload)
        if self._too_big or self._size > self.message_limit():
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
            # What Autobahn's onMessageEnd does, less the per-message signal
            # (a future per message) that nothing here listens to.
            payload = b"".join(self.message_data)
            self.message_data = None  # type: ignore[assignment]
            self.onMessage(payload, self.message_is_binary)
            return
        self.message_data = None  # type: ignore[assignment]
        self.message_refused(self._size, self.message_limit())
