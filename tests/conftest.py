"""
Fixtures for the real layer: a server built by ``makeService`` exactly as
twistd builds it, listening on 127.0.0.1:0, and real clients (treq for REST,
autobahn for WebSocket).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import HTTPConnectionPool

from sysadm_dispatch import tap
from sysadm_dispatch.auth.users import UserEntry, hash_password, read_users, write_users

TIMEOUT = 20.0
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


#: CI runs as root with every optional part installed: there a test that
#: would skip (root-only tests, PAM, TLS, the console script) fails instead,
#: so that a promise is never left untested without anyone noticing.
IN_CI = os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), where every test must run: {reason}"


def with_timeout(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


async def poll(predicate: Callable[[], Any], seconds: float = TIMEOUT, interval: float = 0.02) -> Any:
    """Wait (without blocking the reactor) until ``predicate()`` is true, for a bounded time."""
    deadline = reactor.seconds() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {seconds}s: {predicate}")
        await deferLater(interval)


def deferLater(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater as _later

    return _later(reactor, seconds, lambda: None)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


class _ClientProtocol(WebSocketClientProtocol):
    client: WSClient

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.client.received(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.client.closed(code, reason)


class WSClient:
    """A WebSocket client speaking the dispatcher protocol."""

    def __init__(self) -> None:
        self.protocol: _ClientProtocol | None = None
        self.replies: dict[str, Deferred[dict[str, Any]]] = {}
        self.unmatched: DeferredQueue[dict[str, Any]] = DeferredQueue()
        self.events: DeferredQueue[dict[str, Any]] = DeferredQueue()
        self.close_code: int | None = None
        self.lost: Deferred[int | None] = Deferred()
        self._n = 0

    @classmethod
    async def connect(cls, port: int) -> WSClient:
        client = cls()
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/")
        factory.protocol = _ClientProtocol
        factory.opened = Deferred()
        factory.client = client
        await with_timeout(TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory))
        client.protocol = await with_timeout(factory.opened)
        return client

    def received(self, message: dict[str, Any]) -> None:
        if message.get("namespace") == "events" and message.get("name") not in ("response", "error"):
            self.events.put(message)
            return
        d = self.replies.pop(message.get("id"), None)
        if d is not None:
            d.callback(message)
        else:
            self.unmatched.put(message)

    def closed(self, code: int | None, reason: str | None) -> None:
        self.close_code = code
        if not self.lost.called:
            self.lost.callback(code)

    def send_raw(self, data: bytes, binary: bool = False) -> None:
        assert self.protocol is not None
        self.protocol.sendMessage(data, isBinary=binary)

    def send(self, message: Any) -> None:
        self.send_raw(json.dumps(message).encode())

    async def call(self, name: str, args: Any = None, namespace: str = "rpc", id: str | None = None) -> dict[str, Any]:
        """Send one request and wait for the reply with its id."""
        if id is None:
            self._n += 1
            id = f"req-{self._n}"
        d: Deferred[dict[str, Any]] = Deferred()
        self.replies[id] = d
        self.send({"namespace": namespace, "name": name, "id": id, "args": args})
        return await with_timeout(d)

    async def next_unmatched(self) -> dict[str, Any]:
        return await with_timeout(self.unmatched.get())

    async def next_event(self, seconds: float = TIMEOUT) -> dict[str, Any]:
        return await with_timeout(self.events.get(), seconds)

    async def login(self, username: str, password: str) -> dict[str, Any]:
        return await self.call("auth", {"username": username, "password": password})

    async def close(self) -> None:
        if self.protocol is not None and not self.lost.called:
            self.protocol.sendClose()
            await with_timeout(self.lost)


class Server:
    """A running server and ways to talk to it."""

    def __init__(self, service: Any, options: tap.Options, pool: HTTPConnectionPool) -> None:
        self.service = service
        self.options = options
        self.pool = pool
        self.dispatcher = service.dispatcher
        self.router = service.router
        self.ws_port = service.getServiceNamed("ws").port.getHost().port
        self.rest_port = service.getServiceNamed("rest").port.getHost().port
        self.state_dir = options["state-dir"]
        with open(os.path.join(self.state_dir, "admin-password")) as f:
            self.admin_password = f.read().strip()
        self.clients: list[WSClient] = []
        self.finished: dict[str, list[dict[str, Any]]] = {}
        self._finish_waiters: dict[str, list[Deferred[dict[str, Any]]]] = {}
        self.dispatcher.events.subscribe("dispatcher", self._on_event)

    def _on_event(self, event: Any) -> None:
        if event.args["state"] != "finished":
            return
        job_id = event.args["process_id"]
        waiters = self._finish_waiters.pop(job_id, [])
        if waiters:
            for d in waiters:
                d.callback(event.args)
        else:
            self.finished.setdefault(job_id, []).append(event.args)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def add_user(self, name: str, role: str, password: str) -> None:
        users = read_users(self.options["users"])
        users[name] = UserEntry(name, role, hash_password(password))
        write_users(self.options["users"], users)
        self.router.auth.checker.load()
        self.router.auth.checker.changed += 1

    async def rest(
        self,
        body: Any = None,
        *,
        path: str = "/rpc/dispatcher",
        method: str = "PUT",
        auth: tuple[str, str] | str | None = "admin",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, Any]:
        """One REST request; returns (status, parsed body or None, response)."""
        hdrs = dict(headers or {})
        if auth == "admin":
            auth = ("admin", self.admin_password)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        response = await with_timeout(
            treq.request(method, self.rest_url + path, data=data, headers=hdrs, auth=auth, pool=self.pool)  # type: ignore[arg-type]
        )
        content = await with_timeout(treq.content(response))
        parsed = json.loads(content) if content else None
        return response.code, parsed, response

    async def ws(self, login: str | tuple[str, str] | None = "admin") -> WSClient:
        client = await WSClient.connect(self.ws_port)
        self.clients.append(client)
        if login == "admin":
            reply = await client.login("admin", self.admin_password)
            assert reply["name"] == "response", reply
        elif isinstance(login, tuple):
            reply = await client.login(*login)
            assert reply["name"] == "response", reply
        return client

    async def run(self, args: dict[str, Any]) -> list[str]:
        status, body, _ = await self.rest({"action": "run", **args})
        assert status == 200, body
        return list(body["args"]["started"])

    async def wait_finished(self, job_id: str) -> dict[str, Any]:
        """The next finished record of ``job_id`` (at once if it has finished already)."""
        if self.finished.get(job_id):
            return self.finished[job_id].pop(0)
        d: Deferred[dict[str, Any]] = Deferred()
        self._finish_waiters.setdefault(job_id, []).append(d)
        return await with_timeout(d)

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.pool.closeCachedConnections()
        await with_timeout(self.service.stopService(), 60)


async def start_server(state_dir: str, *args: str) -> Server:
    options = tap.Options()
    options.parseOptions([
        "--ws", "tcp:0:interface=127.0.0.1",
        "--rest", "tcp:0:interface=127.0.0.1",
        "--state-dir", state_dir,
        "--kill-grace", "1",
        *args,
    ])
    service = tap.makeService(options, reactor)
    service.privilegedStartService()
    service.startService()
    for name in ("ws", "rest"):
        await with_timeout(service.getServiceNamed(name).when_listening())
    return Server(service, options, HTTPConnectionPool(reactor, persistent=True))


#: The ``--spawner`` backends.  A module of process-control tests runs every
#: test under each with ``pytestmark = BOTH_SPAWNERS``: its servers get
#: ``--spawner NAME`` (and a test may ask for ``spawner`` itself).
SPAWNER_NAMES = ("fast", "twisted")
BOTH_SPAWNERS = pytest.mark.parametrize("spawner", SPAWNER_NAMES, indirect=True)


@pytest.fixture
def spawner(request: Any) -> str | None:
    """The backend this test's servers start commands with (None: the server's default)."""
    return getattr(request, "param", None)


@pytest.fixture
def make_server(tmp_path: Any, spawner: str | None) -> Any:
    started: list[Server] = []
    counter = [0]

    async def make(*args: str) -> Server:
        counter[0] += 1
        if spawner is not None:
            args = ("--spawner", spawner, *args)
        server = await start_server(str(tmp_path / f"state{counter[0]}"), *args)
        started.append(server)
        return server

    yield make
    for server in started:
        pytest_twisted.blockon(ensureDeferred(server.stop()))


@pytest.fixture
def server(make_server: Callable[..., Awaitable[Server]]) -> Server:
    return pytest_twisted.blockon(ensureDeferred(make_server()))  # type: ignore[arg-type]


def python_env() -> dict[str, str]:
    """Environment for a subprocess that must import this checkout and find its twistd plugin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


PYTHON = sys.executable
