"""Memory per idle connection and per login, ours next to a bare Autobahn server.

Each run starts both servers afresh, warms each (one connection, one login
for ours), then opens N WebSocket connections that stay idle and reads the
server's resident set size (RSS, /proc) after each step:

* ``unauthenticated``: connections past the opening handshake;
* ``authenticated``: each has sent ``auth_token`` (the token of one login);
* ``subscribed``: each has subscribed to ``dispatcher`` events;
* ``bare``: the bare Autobahn server with N connections, each after one
  request and its reply (the least an idle connection costs on this stack).

Then ``login``: M logins over REST (``rpc/auth`` with the password, each
issuing a token), one after another, on a fresh connection each: what a
login leaves behind (its token included), per login.

Figures are KiB per connection (or per login): (RSS after - RSS before) / N.
Usage::

    python bench/idle_memory.py --connections 1000 --logins 200 --repeat 3
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    HOST,
    PASSWORD,
    USERNAME,
    BenchError,
    Stopwatch,
    base_arguments,
    check_base_arguments,
    log,
    run_main,
    start_bare_server,
    start_our_server,
    workspace,
)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError("no VmRSS")


def settle(pid: int) -> int:
    """RSS once the server has gone quiet (its CPU time stops moving for a moment)."""
    stat = Path(f"/proc/{pid}/stat")
    last = None
    for _ in range(100):
        fields = stat.read_text().rsplit(")", 1)[1].split()
        now = (fields[11], fields[12])
        if now == last:
            break
        last = now
        time.sleep(0.05)
    return rss_kib(pid)


def ws_open(port: int) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=60)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise BenchError("handshake refused")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise BenchError(f"handshake refused: {head[:80]!r}")
    return s


def ws_call(s: socket.socket, message: dict[str, Any]) -> dict[str, Any]:
    payload = json.dumps(message).encode()
    size = len(payload)
    header = bytes((0x81, 0x80 | size)) if size < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, size)
    s.sendall(header + b"\0\0\0\0" + payload)
    first = s.recv(2, socket.MSG_WAITALL)
    size = first[1] & 0x7F
    if size == 126:
        size = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
    elif size == 127:
        size = struct.unpack("!Q", s.recv(8, socket.MSG_WAITALL))[0]
    return dict(json.loads(s.recv(size, socket.MSG_WAITALL)))


def rest_login(port: int) -> str:
    body = json.dumps({"username": USERNAME, "password": PASSWORD}).encode()
    with socket.create_connection((HOST, port), timeout=60) as s:
        s.sendall(b"PUT /rpc/auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                  % len(body) + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise BenchError(f"login refused: {data[:200]!r}")
    if b"chunked" in head.lower():
        rest = rest.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return str(json.loads(rest)["args"][0])


def per(delta_kib: int, n: int) -> float:
    return round(delta_kib / n, 2)


def run_ours(workdir: Path, children: Any, connections: int, logins: int) -> dict[str, float]:
    server = start_our_server(children, workdir)
    pid = server.process.pid
    token = rest_login(server.rest_port)  # warms the login path (its thread pool included)
    warm = ws_open(server.ws_port)
    ws_call(warm, {"namespace": "rpc", "name": "auth_token", "id": "1", "args": {"token": token}})
    ws_call(warm, {"namespace": "events", "name": "subscribe", "id": "2", "args": ["dispatcher"]})
    sockets = []
    try:
        base = settle(pid)
        for _ in range(connections):
            sockets.append(ws_open(server.ws_port))
        opened = settle(pid)
        for s in sockets:
            reply = ws_call(s, {"namespace": "rpc", "name": "auth_token", "id": "a", "args": {"token": token}})
            if reply["name"] != "response":
                raise BenchError(f"auth_token refused: {reply}")
        authenticated = settle(pid)
        for s in sockets:
            ws_call(s, {"namespace": "events", "name": "subscribe", "id": "s", "args": ["dispatcher"]})
        subscribed = settle(pid)
    finally:
        for s in sockets:
            s.close()
        warm.close()
    before = settle(pid)
    for _ in range(logins):
        rest_login(server.rest_port)
    after = settle(pid)
    return {
        "unauthenticated_kib": per(opened - base, connections),
        "authenticated_kib": per(authenticated - base, connections),
        "subscribed_kib": per(subscribed - base, connections),
        "login_kib": per(after - before, logins),
    }


def run_bare(children: Any, connections: int) -> dict[str, float]:
    prefix = '{"namespace": "rpc", "name": "response", "id": '
    process, port = start_bare_server(children, "autobahn", ["--prefix", prefix, "--suffix", ', "args": {}}'])
    warm = ws_open(port)
    ws_call(warm, {"id": "w"})
    sockets = []
    try:
        base = settle(process.pid)
        for _ in range(connections):
            s = ws_open(port)
            ws_call(s, {"id": "x"})
            sockets.append(s)
        opened = settle(process.pid)
    finally:
        for s in sockets:
            s.close()
        warm.close()
    return {"bare_kib": per(opened - base, connections)}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else round((ordered[middle - 1] + ordered[middle]) / 2, 2)


def main() -> int:
    parser = base_arguments(__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000, help="idle connections per step (default 1000)")
    parser.add_argument("--logins", type=int, default=200, help="sequential REST logins (default 200)")
    args = parser.parse_args()
    check_base_arguments(parser, args)
    watch = Stopwatch()
    runs: list[dict[str, float]] = []
    for n in range(args.repeat):
        with workspace("idle-memory-") as (workdir, children):
            result = run_bare(children, args.connections)
            if not args.bare_only:
                result.update(run_ours(workdir, children, args.connections, args.logins))
            log(f"run {n + 1}: {result}")
            runs.append(result)
    medians = {key: median([run[key] for run in runs]) for key in runs[0]}
    watch.emit({"bench": "idle_memory", "connections": args.connections, "logins": args.logins,
                "repeat": args.repeat, "median": medians, "runs": runs})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_main(main, OSError)
