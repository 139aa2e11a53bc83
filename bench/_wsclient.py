"""A minimal asyncio WebSocket client, cheap enough to load a Python server.

Just enough of RFC 6455 for the benchmark: one opening handshake, masked text
frames out, unfragmented text or binary frames in, pings answered, a close
frame ends the connection.  No futures or coroutines per message: a reply is
handed to a plain callback from ``data_received``, which may send the next
request.  Each frame is written at once rather than gathered per read: batches
would make client and server take turns instead of working in parallel (on
this 2-core machine that cost the bare server a quarter of its throughput).
The ``websockets`` library was tried first: it used two thirds of the CPU the
bare Autobahn server it drove did, this client uses about 40 % (asyncio) or
30 % (uvloop), so the bare server, not the client, is what saturates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import cast

HANDSHAKE_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER_BYTES = 16384
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = (
    0x0,
    0x1,
    0x2,
    0x8,
    0x9,
    0xA,
)


class WebSocketError(Exception):
    pass


def _mask(payload: bytes) -> bytes:
    """Return the 4-byte key followed by ``payload`` XORed with it."""
    key = os.urandom(4)
    size = len(payload)
    repeated = (key * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    return key + masked.to_bytes(size, "little")


def _frame(opcode: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + _mask(payload)


class WebSocketClient(asyncio.Protocol):
    """Call ``connect``, set ``on_message`` and ``on_error``, then ``send``."""

    def __init__(self, host: str, port: int) -> None:
        self._request_head = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        self._key = base64.b64encode(os.urandom(16))
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._open = False
        self._closing = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_message: Callable[[bytes], None] = self._unexpected
        # Told of a protocol error or an unexpected loss of the connection.
        self.on_error: Callable[[BaseException], None] = lambda error: None

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> WebSocketClient:
        loop = asyncio.get_running_loop()
        _, client = await asyncio.wait_for(loop.create_connection(lambda: cls(host, port), host, port), timeout)
        await asyncio.wait_for(client.opened, timeout)
        return client

    def _unexpected(self, payload: bytes) -> None:
        raise WebSocketError(f"message with nobody waiting for it: {payload[:200]!r}")

    def send(self, text: str) -> None:
        self._write(_frame(OP_TEXT, text.encode()))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._closing:
            self._transport.write(data)

    def close(self) -> None:
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            if self._open:
                self._transport.write(_frame(OP_CLOSE, struct.pack("!H", 1000)))
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(
            self._request_head.encode() + b"Sec-WebSocket-Key: " + self._key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def connection_lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            # A signal arrived during one of our callbacks and uvloop turned it into a
            # lost connection: hand it on as it is, so that the program exits by it.
            self._fail(exc)
        elif not self._closing:
            self._fail(WebSocketError(f"connection lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            if not self._open and not self._read_handshake():
                return
            self._read_frames()
        except WebSocketError as error:
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        self._closing = True
        if not self.opened.done():
            self.opened.set_exception(error)
        self.on_error(error)
        if self._transport is not None:
            self._transport.abort()

    def _read_handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise WebSocketError("handshake reply too long")
            return False
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        if head[0].split(" ")[1:2] != ["101"]:
            raise WebSocketError(f"handshake refused: {head[0]}")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
        expected = base64.b64encode(hashlib.sha1(self._key + HANDSHAKE_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise WebSocketError("handshake reply has a wrong Sec-WebSocket-Accept")
        self._open = True
        self.opened.set_result(None)
        return True

    def _read_frames(self) -> None:
        buffer = self._buffer
        position = 0
        available = len(buffer)
        while available - position >= 2 and not self._closing:
            first, second = buffer[position], buffer[position + 1]
            size = second & 0x7F
            start = position + 2
            if size == 126:
                if available - start < 2:
                    break
                (size,) = struct.unpack_from("!H", buffer, start)
                start += 2
            elif size == 127:
                if available - start < 8:
                    break
                (size,) = struct.unpack_from("!Q", buffer, start)
                start += 8
            if available - start < size:
                break
            if second & 0x80:
                raise WebSocketError("the server sent a masked frame")
            if not first & 0x80 or first & 0x0F == OP_CONTINUATION:
                raise WebSocketError("fragmented messages are not supported by this client")
            payload = bytes(buffer[start : start + size])
            position = start + size
            self._handle(first & 0x0F, payload)
        del buffer[:position]

    def _handle(self, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY):
            self.on_message(payload)
        elif opcode == OP_PING:
            self._write(_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            raise WebSocketError(f"server closed the connection: {code} {payload[2:].decode(errors='replace')}")
        elif opcode != OP_PONG:
            raise WebSocketError(f"unknown opcode {opcode}")
