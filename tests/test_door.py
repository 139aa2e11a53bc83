"""
What clients that never log in can take from a real server: memory,
descriptors, disk and log lines (docs/security.rst, "Connections and
limits").  Each test runs ``twistd sysadm-dispatch`` in its own process and
measures it from outside.
"""

from __future__ import annotations

from typing import Any

from door_helpers import Twistd, frame_header, ws_open, ws_reply, ws_send


def test_unauthenticated_websocket_messages_are_small(tmp_path: Any) -> None:
    # 150 connections that never log in, each sending a 1,000,000-byte
    # message (under the normal 1 MiB limit): held whole, they would cost
    # 150 MB; before login only 64 KiB of a message is kept.
    server = Twistd(tmp_path)
    sockets = []
    try:
        start = server.status("VmRSS")
        size = 1_000_000
        for _ in range(150):
            s = ws_open(server.ws_port)
            sockets.append(s)
            s.sendall(frame_header(size) + b"x" * (size - 1000))
        for s in sockets:
            s.sendall(b"x" * 1000)
            reply = ws_reply(s)
            assert reply["args"]["code"] == 413, reply
            assert "limit of 65536 before login" in reply["args"]["detail"], reply
        grown = server.status("VmHWM") - start
        assert grown < 50 * 1024, f"the server's peak RSS grew by {grown} KiB"
        # The connection stays usable: a login and then a normal-sized message.
        s = sockets[0]
        ws_send(s, {"namespace": "rpc", "name": "auth", "id": "1",
                    "args": {"username": "admin", "password": server.password}})
        assert ws_reply(s)["name"] == "response"
        ws_send(s, {"namespace": "rpc", "name": "dispatcher", "id": "2", "args": {"action": "list", "pad": ["y" * 60_000] * 4}})
        reply = ws_reply(s)
        assert reply["name"] == "response", reply
    finally:
        for s in sockets:
            s.close()
        assert server.stop(), server.log()
    assert "Traceback" not in server.log()
