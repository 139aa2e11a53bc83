"""
A WebSocket client that subscribes to dispatcher events and reads as fast
as it can, in a process of its own: the client the server must never drop.

    python fast_reader.py PORT TOKEN N
Prints "ready" once subscribed; then reads until N jobs have finished or
the server closes, and prints one JSON line: the finished jobs, the bytes
of output received, and the close frame's code (null if none).
"""

import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from door_helpers import ws_open, ws_recv, ws_send


def main() -> None:
    port, token, jobs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    sock = ws_open(port, timeout=120)
    ws_send(sock, {"namespace": "rpc", "name": "auth_token", "id": "1", "args": {"token": token}})
    ws_send(sock, {"namespace": "events", "name": "subscribe", "id": "2", "args": ["dispatcher"]})
    replies = 0
    while replies < 2:
        opcode, payload = ws_recv(sock)
        message = json.loads(payload)
        assert message["name"] == "response", message
        replies += 1
    print("ready", flush=True)
    finished, output, close = set(), 0, None
    while len(finished) < jobs:
        opcode, payload = ws_recv(sock)
        if opcode == 8:
            close = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            break
        args = json.loads(payload)["args"]
        output += len(payload)
        if args.get("state") == "finished":
            finished.add(args["process_id"])
    print(json.dumps({"finished": sorted(finished), "bytes": output, "close": close}), flush=True)


main()
