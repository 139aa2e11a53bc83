"""
What clients that never log in can take from a real server: memory,
descriptors, disk and log lines (docs/security.rst, "Connections and
limits").  Each test runs ``twistd sysadm-dispatch`` in its own process and
measures it from outside.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import selectors
import socket
import time
from typing import Any

from door_helpers import Twistd, frame_header, wait_until, ws_open, ws_reply, ws_send


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


def _http_response(s: Any) -> tuple[int, bytes]:
    """Read one whole response (the server closes after it); its status and body."""
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _closed_by_server(s: Any) -> bool:
    try:
        data = s.recv(1000)
        assert not data, data
        return True
    except ConnectionResetError:
        return True


def _temp_files(server: Twistd) -> list[str]:
    pid = server.process.pid
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return [n for n in names if "(deleted)" in n]  # a TemporaryFile is unlinked at once


def test_rest_without_credentials_is_answered_from_its_headers(tmp_path: Any) -> None:
    # 200 requests declaring 1 MB bodies, without credentials, each sending
    # its headers and 200 kB: each is answered 401 at once, no body is
    # spooled to a temporary file, and the connections are closed.
    server = Twistd(tmp_path)
    sockets = []
    try:
        start = server.status("VmRSS")
        head = (b"PUT /rpc/dispatcher HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000000\r\n\r\n")
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
            sockets.append(s)
            s.sendall(head + b" " * 200_000)
        assert not _temp_files(server)
        for s in sockets:
            status, body = _http_response(s)  # without sending the rest of the body
            assert status == 401, body
            assert json.loads(body)["args"]["detail"].startswith("credentials missing")
        assert server.status("VmHWM") - start < 40 * 1024
        wait_until(lambda: server.fds() < 40, 30, "the refused connections closed")
        # A wrong Basic password and a made-up token, the same.
        for auth in (b"Basic " + base64.b64encode(b"admin:wrong"), b"Bearer made-up"):
            s = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
            s.sendall(head.replace(b"\r\n\r\n", b"\r\nAuthorization: " + auth + b"\r\n\r\n") + b" " * 1000)
            status, body = _http_response(s)
            s.close()
            assert status == 401, body
        # A declared body over the limit, with good credentials: 413 from the headers.
        good = b"Basic " + base64.b64encode(b"admin:" + server.password.encode())
        s = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
        s.sendall(head.replace(b"1000000", b"5000000").replace(b"\r\n\r\n", b"\r\nAuthorization: " + good + b"\r\n\r\n"))
        status, body = _http_response(s)
        s.close()
        assert status == 413, body
        # And a good request still works.
        s = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
        request = b'{"action": "list"}'
        s.sendall(b"PUT /rpc/dispatcher HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + good
                  + b"\r\nContent-Length: %d\r\n\r\n" % len(request) + request)
        status, body = _http_response(s)
        s.close()
        assert status == 200 and b'{"args":{"jobs":{}}}' in body
    finally:
        for s in sockets:
            s.close()
        assert server.stop(), server.log()
    assert "Traceback" not in server.log()


def test_rest_connection_caps_and_request_timeout(tmp_path: Any) -> None:
    server = Twistd(tmp_path, "--max-rest-connections-per-address", "5", "--max-rest-connections", "8",
                    "--request-timeout", "1")
    sockets = []
    try:
        for _ in range(5):
            sockets.append(socket.create_connection(("127.0.0.1", server.rest_port), timeout=30))
        # The sixth from this address is refused at once, with a reason.
        extra = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
        status, body = _http_response(extra)
        extra.close()
        assert status == 503 and "too many connections from 127.0.0.1 (limit 5)" in body.decode(), body
        # Connections that never complete a request (one trickles a header)
        # are closed after the request timeout, far sooner than the idle one.
        sockets[0].sendall(b"PUT /rpc/dispatcher HTTP/1.1\r\n")
        started = time.monotonic()
        for s in sockets:
            assert _closed_by_server(s)
        assert time.monotonic() - started < 10
        wait_until(lambda: "no complete request within 1 s" in server.log(), 10)
        # The places are free again.
        s = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
        s.sendall(b"PUT /rpc/identify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        assert _http_response(s)[0] == 200
        s.close()
    finally:
        for s in sockets:
            s.close()
        assert server.stop(), server.log()
    assert "Traceback" not in server.log()


def _lower_descriptor_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))


def test_out_of_descriptors_is_logged_once_and_recovered_from(tmp_path: Any) -> None:
    # The server may hold 64 descriptors; 120 clients connect and wait.
    server = Twistd(tmp_path, preexec=_lower_descriptor_limit)
    sockets = []
    try:
        for _ in range(120):
            sockets.append(socket.create_connection(("127.0.0.1", server.ws_port), timeout=30))
        marks = ("cannot accept connections", "Could not accept new connection", "EMFILE encountered", "EMFILE recovery")
        wait_until(lambda: any(m in server.log() for m in marks), 30, "the server ran out of descriptors")
        # A REST request waits in the listen queue; freeing descriptors lets it in.
        rest = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
        rest.sendall(b"PUT /rpc/identify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        for s in sockets[:80]:
            s.close()
        status, _ = _http_response(rest)
        rest.close()
        assert status == 200
        lines = [line for line in server.log().splitlines() if any(m in line for m in marks)]
        assert len(lines) <= 2, f"{len(lines)} lines, the first: {lines[:3]}"
        assert "EMFILE" in lines[0]
    finally:
        for s in sockets:
            s.close()
        assert server.stop(), server.log()[-3000:]
    assert "Traceback" not in server.log()


def test_a_login_flood_is_bounded_and_others_are_answered(tmp_path: Any) -> None:
    # 200 password logins at once: at most --max-login-checks (64) are taken
    # on, the rest refused at once with 503; meanwhile another client's
    # requests are answered promptly throughout.
    server = Twistd(tmp_path)
    body = json.dumps({"username": "admin", "password": server.password}).encode()
    login = (b"PUT /rpc/auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
             % len(body) + body)
    probe = b"PUT /rpc/identify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    flood = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.rest_port), timeout=60)
            flood.append(s)
        sent = time.monotonic()
        for s in flood:
            s.sendall(login)
        answers: dict[int, tuple[int, float]] = {}
        latencies = []
        selector = selectors.DefaultSelector()
        buffers = {s.fileno(): b"" for s in flood}
        for s in flood:
            selector.register(s, selectors.EVENT_READ)
        while len(answers) < len(flood):
            # One probe per round, timed; then whatever flood answers came.
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as p:
                p.sendall(probe)
                assert _http_response(p)[0] == 200
            latencies.append(time.monotonic() - started)
            for key, _ in selector.select(timeout=0.05):
                sock: Any = key.fileobj
                chunk = sock.recv(65536)
                buffers[key.fd] += chunk
                if not chunk:
                    selector.unregister(sock)
                    answers[key.fd] = (int(buffers[key.fd].split()[1]), time.monotonic() - sent)
            assert time.monotonic() - sent < 120, "the flood was not answered within 2 minutes"
        codes = [code for code, _ in answers.values()]
        assert set(codes) <= {200, 503}, codes
        assert 0 < codes.count(200) and codes.count(503) >= 200 - 64 - 10, codes
        # Refusals come at once, not after the checks before them.
        refused_after = sorted(t for code, t in answers.values() if code == 503)
        assert refused_after[-1] < 5, refused_after[-5:]
        assert max(latencies) < 2.0, sorted(latencies)[-5:]
    finally:
        for s in flood:
            s.close()
        assert server.stop(), server.log()[-3000:]
    assert "Traceback" not in server.log()


def _settled_rss(server: Twistd) -> int:
    """The server's RSS (KiB) once its CPU time stops moving for a moment."""
    last = None
    for _ in range(200):
        with open(f"/proc/{server.process.pid}/stat") as f:
            now = f.read().rsplit(")", 1)[1].split()[11:13]
        if now == last:
            break
        last = now
        time.sleep(0.05)
    return server.status("VmRSS")


def test_logged_in_idle_connections_cost_little(tmp_path: Any) -> None:
    # 200 WebSocket connections, each logged in with the password and
    # subscribed, then idle: at most 16 KiB each, password checks included
    # (their memory must not stay behind in the checking threads).
    server = Twistd(tmp_path)
    warm = ws_open(server.ws_port)
    ws_send(warm, {"namespace": "rpc", "name": "auth", "id": "w", "args": {"username": "admin",
                                                                          "password": server.password}})
    assert ws_reply(warm)["name"] == "response"
    sockets = []
    try:
        start = _settled_rss(server)
        for _ in range(4):
            opened = [ws_open(server.ws_port) for _n in range(50)]
            for s in opened:
                ws_send(s, {"namespace": "rpc", "name": "auth", "id": "1",
                            "args": {"username": "admin", "password": server.password}})
                ws_send(s, {"namespace": "events", "name": "subscribe", "id": "2", "args": ["dispatcher"]})
            for s in opened:
                assert [ws_reply(s)["name"], ws_reply(s)["name"]] == ["response", "response"]
            sockets += opened
        per_connection = (_settled_rss(server) - start) / len(sockets)
        assert per_connection <= 16, f"{per_connection:.1f} KiB per connection"
    finally:
        for s in sockets:
            s.close()
        warm.close()
        assert server.stop(), server.log()[-3000:]
