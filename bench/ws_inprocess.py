"""Server CPU per WebSocket request, in process: no sockets, no client.

The real WebSocket protocol of a checkout (``--checkout``, default this
one) over a ``StringTransport``, logged in, is fed 64 pipelined
``rpc/dispatcher list`` frames per ``dataReceived``, on a Clock that runs
password checks at once; process CPU time per request, best of
``--repeat`` runs.  The same figure for two checkouts, run one after the
other, says what a change to the request path costs without the noise of
sockets and a client sharing the machine.  Its raw limit is the JSON
round trip alone (parse a request, encode a reply), measured in the same
run.  Prints one JSON line.  See docs/benchmarks.rst.

    python bench/ws_inprocess.py [--checkout DIR] [--repeat 7] [--batches 300]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path


def frame(text: str) -> bytes:
    """A masked text frame, as a client sends it."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return head + mask + masked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--batches", type=int, default=300)
    options = parser.parse_args()
    root = options.checkout
    sys.path[:0] = [root, os.path.join(root, "tests")]
    from security_helpers import SyncClock  # the checkout's own test clock
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from sysadm_dispatch import Dispatcher, make_router, make_websocket_factory
    try:
        from sysadm_dispatch.auth.users import UserEntry, hash_password, write_users
    except ImportError:  # a checkout from before the auth room was split
        from sysadm_dispatch.auth import UserEntry, hash_password, write_users  # type: ignore[no-redef]

    clock = SyncClock()
    users = os.path.join(tempfile.mkdtemp(), "users")
    write_users(users, {"bench": UserEntry("bench", "full", hash_password("pw"))})
    factory = make_websocket_factory(make_router(Dispatcher(clock), users))
    peer = IPv4Address("TCP", "127.0.0.1", 5)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    key = base64.b64encode(os.urandom(16)).decode()
    protocol.dataReceived((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b" 101 " in transport.value()[:40], transport.value()[:200]
    transport.clear()
    login = {"namespace": "rpc", "name": "auth", "id": "a", "args": {"username": "bench", "password": "pw"}}
    protocol.dataReceived(frame(json.dumps(login)))
    clock.advance(0)
    assert b'"response"' in transport.value(), transport.value()
    transport.clear()
    request = json.dumps({"namespace": "rpc", "name": "dispatcher", "id": "r1", "args": {"action": "list"}})
    batch = frame(request) * 64
    per_run = options.batches * 64

    def ours() -> float:
        start = time.process_time()
        for _ in range(options.batches):
            protocol.dataReceived(batch)
            clock.advance(0)
            transport.clear()
        return (time.process_time() - start) / per_run

    def raw() -> float:
        start = time.process_time()
        for _ in range(per_run):
            message = json.loads(request)
            json.dumps({"namespace": "rpc", "name": "response", "id": message["id"], "args": {"jobs": {}}}).encode()
        return (time.process_time() - start) / per_run

    ours()
    best = min(ours() for _ in range(options.repeat))
    json_best = min(raw() for _ in range(options.repeat))
    print(json.dumps({"bench": "ws_inprocess", "checkout": os.path.basename(os.path.abspath(root)),
                      "requests_per_run": per_run, "us_per_request": round(best * 1e6, 2),
                      "raw_json_us_per_request": round(json_best * 1e6, 2),
                      "ratio_to_raw_json": round(best / json_best, 2)}))


if __name__ == "__main__":
    main()
