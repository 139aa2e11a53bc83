"""
A real ``twistd sysadm-dispatch`` in a process of its own, driven from a
plain (blocking) test with raw sockets: for what the server holds while
hostile clients knock, measured from outside (its RSS, its log).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any

from conftest import PYTHON, python_env
from twistd_helpers import TWISTD, free_port


def wait_until(predicate: Callable[[], Any], seconds: float = 30.0, what: str = "") -> Any:
    """Poll ``predicate`` until it is true, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what or predicate}")
        time.sleep(0.02)


class Twistd:
    """
    The server on free ports; ``stop()`` ends it (SIGTERM) and says whether
    it ended cleanly: twistd stops, then ends itself with the signal it got.
    """

    def __init__(self, tmp_path: Any, *args: str, preexec: Callable[[], None] | None = None) -> None:
        self.ws_port, self.rest_port = free_port(), free_port()
        self.state = str(tmp_path / "state")
        self.log_path = str(tmp_path / "server.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [PYTHON, *TWISTD, "-n", "--pidfile=", "sysadm-dispatch", "--state-dir", self.state,
             "--ws", f"tcp:{self.ws_port}:interface=127.0.0.1",
             "--rest", f"tcp:{self.rest_port}:interface=127.0.0.1", *args],
            env=python_env(), cwd=str(tmp_path), stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=preexec,
        )
        try:
            for port in (self.ws_port, self.rest_port):
                wait_until(lambda port=port: self._up(port), 60, f"port {port} listening")
        except BaseException:
            self.stop()
            raise
        with open(os.path.join(self.state, "admin-password")) as f:
            self.password = f.read().strip()
        # A whole request answered: the reactor runs, and has seen the probes
        # above come and go (they would count against connection caps).
        with socket.create_connection(("127.0.0.1", self.rest_port), timeout=30) as s:
            s.sendall(b"PUT /rpc/identify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            while s.recv(65536):
                pass

    def _up(self, port: int) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"twistd exited early:\n{self.log()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def status(self, field: str) -> int:
        """A field of /proc/PID/status in KiB (VmRSS, VmHWM)."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(field)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> bool:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode in (0, -15)


def ws_open(port: int, timeout: float = 30.0) -> socket.socket:
    """A raw socket past the WebSocket opening handshake."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def frame_header(size: int, opcode: int = 1) -> bytes:
    """A client's final frame header with an all-zero mask (the payload goes as it is)."""
    if size < 126:
        return bytes((0x80 | opcode, 0x80 | size)) + b"\0\0\0\0"
    if size < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size) + b"\0\0\0\0"
    return struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size) + b"\0\0\0\0"


def ws_send(s: socket.socket, message: Any) -> None:
    payload = json.dumps(message).encode()
    s.sendall(frame_header(len(payload)) + payload)


def ws_recv(s: socket.socket) -> tuple[int, bytes]:
    """One frame from the server: (opcode, payload)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    first, second = exactly(2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", exactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", exactly(8))[0]
    return first & 0x0F, exactly(size)


def ws_reply(s: socket.socket) -> dict[str, Any]:
    """The next text message from the server, parsed."""
    while True:
        opcode, payload = ws_recv(s)
        if opcode == 1:
            return dict(json.loads(payload))
        if opcode == 8:
            raise ConnectionError(f"closed by the server: {payload!r}")
