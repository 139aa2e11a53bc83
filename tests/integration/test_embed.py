"""The embedding API, used by a plain Twisted program without twistd."""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import subprocess
import time
import urllib.request
from typing import Any

import pytest
import pytest_twisted
import treq
from conftest import PYTHON, REPO, WSClient, python_env, with_timeout
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import HTTPConnectionPool

from sysadm_dispatch import (
    Dispatcher,
    InvalidJob,
    Server,
    make_rest_resource,
    make_router,
    make_server,
    make_websocket_factory,
)
from sysadm_dispatch.auth.users import FULL, UserEntry, hash_password, write_users

EXAMPLE = os.path.join(REPO, "docs", "examples", "embed.py")


class Lines:
    """A child's output, line by line, each awaited for a bounded time."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.fd = process.stdout.fileno()
        self.buffer = b""
        self.seen: list[str] = []

    def until(self, predicate: Any, seconds: float = 60) -> str:
        deadline = time.monotonic() + seconds
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                self.seen.append(line.decode())
                if predicate(self.seen[-1]):
                    return self.seen[-1]
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"nothing matched within {seconds}s; output so far: {self.seen}"
            data = os.read(self.fd, 65536)
            assert data, f"the example exited; output: {self.seen}"
            self.buffer += data


def test_documented_example_runs_and_serves_a_real_request(tmp_path: Any) -> None:
    users = tmp_path / "users"
    write_users(str(users), {"me": UserEntry("me", FULL, hash_password("pw"))})
    process = subprocess.Popen([PYTHON, EXAMPLE, str(users)], env=python_env(), stdout=subprocess.PIPE)
    try:
        lines = Lines(process)
        listening = lines.until(lambda line: line.startswith("listening "))
        rest_port = int(listening.split()[1])
        record = json.loads(lines.until(lambda line: line.startswith("record "))[len("record "):])
        events = [line for line in lines.seen if line.startswith("event")]
        # Output may go out in running updates of its own before the end (a job's first at once).
        assert events[:2] == ["event pending", "event running"] and events[-1] == "event finished", events
        assert set(events[2:-1]) <= {"event running"}, events
        assert record["success"] == "true"
        assert record["queue"] == "backup_queue"
        assert record["process_details"]["echo world"] == "world\n"
        # It goes on serving: a client's request runs a job through it.
        request = urllib.request.Request(
            f"http://127.0.0.1:{rest_port}/rpc/dispatcher", method="PUT",
            data=json.dumps({"action": "run", "served": "echo served"}).encode(),
            headers={"Authorization": "Basic " + base64.b64encode(b"me:pw").decode()})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (a fixed http URL)
            reply = json.loads(response.read())
        assert reply["args"]["started"] == ["served"]
        lines.until(lambda line: line == "event finished")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest_twisted.ensureDeferred
async def test_embedded_dispatcher_in_this_reactor(tmp_path: Any) -> None:
    users = tmp_path / "users"
    write_users(str(users), {"me": UserEntry("me", FULL, hash_password("pw"))})
    dispatcher = Dispatcher(reactor)
    dispatcher.startService()
    router = make_router(dispatcher, str(users))
    assert make_rest_resource(router) is not None
    assert make_websocket_factory(router).router is router
    try:
        dispatcher.run("bad", [])
    except InvalidJob as e:
        assert "'bad'" in str(e)
    else:
        raise AssertionError("an empty chain was accepted")
    record = await with_timeout(dispatcher.run(None, "sh -c 'exit 4'"))
    assert record["success"] == "false"
    assert record["process_details"]["return_codes/sh -c 'exit 4'"] == "4"
    await with_timeout(ensureDeferred(_stop(dispatcher)))


async def _stop(dispatcher: Dispatcher) -> None:
    await dispatcher.stopService()


SERVER_EXAMPLE = os.path.join(REPO, "docs", "examples", "server.py")


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest_twisted.ensureDeferred
async def test_make_server_in_a_plain_twisted_app(tmp_path: Any) -> None:
    """``make_server`` under an application's own MultiService: real sockets, real requests, a clean stop."""
    state = tmp_path / "state"
    application = MultiService()
    server = make_server(reactor, state_dir=str(state), queues={"backup_queue": 1}, kill_grace=1.0,
                         rest="tcp:0:interface=127.0.0.1", ws="tcp:0:interface=127.0.0.1")
    assert isinstance(server, Server)
    server.setServiceParent(application)
    application.privilegedStartService()
    application.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = None
    try:
        rest_port = (await with_timeout(server.listener("rest").when_listening())).getHost().port
        ws_port = (await with_timeout(server.listener("ws").when_listening())).getHost().port
        password = (state / "admin-password").read_text().strip()
        finished: Deferred[dict[str, Any]] = Deferred()
        server.dispatcher.events.subscribe("dispatcher", lambda event: (
            event.args["state"] == "finished" and not finished.called and finished.callback(event.args)))
        # REST: the admin of the users file made on first run runs a job in the queue asked for.
        response = await with_timeout(treq.put(
            f"http://127.0.0.1:{rest_port}/rpc/dispatcher", pool=pool, headers=_basic("admin", password),
            data=json.dumps({"action": "run", "jobs": [{"id": "embedded", "commands": "echo embedded",
                                                     "queue": "backup_queue"}]}).encode()))
        reply = json.loads(await with_timeout(treq.content(response)))
        assert response.code == 200 and reply["args"]["started"] == ["embedded"], reply
        record = await with_timeout(finished)
        assert record["process_id"] == "embedded" and record["queue"] == "backup_queue"
        assert record["process_details"]["echo embedded"] == "embedded\n"
        # WebSocket, on its own listener, sharing the router (and so the tokens).
        client = await WSClient.connect(ws_port)
        login = await client.login("admin", password)
        assert login["name"] == "response", login
        listed = await client.call("dispatcher", {"action": "list"})
        assert listed["args"] == {"jobs": {}}, listed
    finally:
        if client is not None:
            await client.close()
        await pool.closeCachedConnections()
        await with_timeout(application.stopService(), 60)
    assert not server.running and not server.dispatcher.running
    # The listeners are closed: nothing answers on the port any more.
    with pytest.raises(ConnectionRefusedError):
        await with_timeout(TCP4ClientEndpoint(reactor, "127.0.0.1", rest_port).connect(Factory.forProtocol(Protocol)))


def test_documented_server_example_serves_and_stops(tmp_path: Any) -> None:
    state = tmp_path / "state"
    process = subprocess.Popen([PYTHON, SERVER_EXAMPLE, str(state)], env=python_env(), stdout=subprocess.PIPE)
    try:
        lines = Lines(process)
        rest_port = int(lines.until(lambda line: line.startswith("listening ")).split()[1])
        password = (state / "admin-password").read_text().strip()
        request = urllib.request.Request(
            f"http://127.0.0.1:{rest_port}/rpc/dispatcher", method="PUT",
            data=json.dumps({"action": "run", "served": "echo served"}).encode(), headers=_basic("admin", password))
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (a fixed http URL)
            reply = json.loads(response.read())
        assert reply["args"]["started"] == ["served"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
