"""
A WebSocket client that subscribes to dispatcher events and then never reads
again, with a tiny receive buffer: the slow consumer the server must drop.

    python stuck_client.py PORT TOKEN
Prints "ready" once subscribed, then waits until its stdin closes.
"""

import base64
import json
import os
import socket
import struct
import sys


def frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    header = bytes([0x81])
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_message(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise SystemExit("closed")
            data += chunk
        return data

    first, second = exactly(2)
    n = second & 0x7F
    if n == 126:
        n = struct.unpack("!H", exactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exactly(8))[0]
    return exactly(n)


def main() -> None:
    port, token = int(sys.argv[1]), sys.argv[2]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert b" 101 " in response.split(b"\r\n", 1)[0], response
    for request in (
        {"namespace": "rpc", "name": "auth_token", "id": "a", "args": {"token": token}},
        {"namespace": "events", "name": "subscribe", "id": "s", "args": ["dispatcher"]},
    ):
        sock.sendall(frame(json.dumps(request).encode()))
        reply = json.loads(read_message(sock))
        assert reply["name"] == "response", reply
    print("ready", flush=True)
    sys.stdin.read()  # never read the socket again
    sock.close()


if __name__ == "__main__":
    main()
