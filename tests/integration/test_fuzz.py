"""
The router under fuzzing (Hypothesis): arbitrary JSON, random envelopes and
random args, from anonymous, full, read-only and blocked clients.

Most examples go to ``Router.handle_bytes`` in memory (a Clock, password
checks on the calling thread, jobs that run until killed but start no
process); a sample goes through a real server over real WebSocket and REST
connections.  Every request must get exactly one reply (none for
``auth_clear``), always a valid envelope, never a 500; a rejected request
changes nothing; the connection stays usable.  bench/fuzz_router.py runs
the same checks with a much larger budget.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from typing import Any
from urllib.parse import quote

import pytest_twisted
from conftest import WSClient, with_timeout
from fakes import FakeRunner
from fuzz_strategies import batches, check_envelope, expectation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_helpers import SyncClock, cheap_hash
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.python.failure import Failure

from sysadm_dispatch.api.router import Router, Session
from sysadm_dispatch.auth.blocking import LoginGuard
from sysadm_dispatch.auth.checker import UsersFileChecker
from sysadm_dispatch.auth.login import Authenticator
from sysadm_dispatch.auth.users import FULL, READ, User, UserEntry, write_users
from sysadm_dispatch.core.dispatcher import Dispatcher

#: Who sends the requests (a blocked address less often: it gets 403 for everything).
KINDS = ["anonymous", "full", "full", "reader", "reader", "blocked"]


class Subscriptions:
    """What a push-capable transport offers the router, recorded."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def subscribe(self, name: str) -> None:
        self.names.add(name)

    def unsubscribe(self, name: str) -> None:
        self.names.discard(name)


class World:
    """A router over a dispatcher and users, all in memory."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="sysadm-dispatch-fuzz-")
        self.clock = SyncClock()
        users = os.path.join(self.directory, "users")
        write_users(users, {"full": UserEntry("full", FULL, cheap_hash("pw")),
                            "reader": UserEntry("reader", READ, cheap_hash("pw"))})
        checker = UsersFileChecker(self.clock, users)
        checker.load()
        self.guard = LoginGuard(self.clock)
        self.auth = Authenticator(self.clock, checker, guard=self.guard)
        empty = os.path.join(self.directory, "empty-path")
        os.mkdir(empty)
        self.dispatcher = Dispatcher(self.clock, runner_factory=FakeRunner, environ={"PATH": empty})
        self.router = Router(self.dispatcher, self.auth)
        self._addresses = itertools.count(1)
        self.blocked = "192.0.2.254"
        for _ in range(self.guard.max_failures):
            self.guard.attempt(self.blocked)
            self.guard.failed(self.blocked)

    def session(self, kind: str) -> Session:
        n = next(self._addresses)
        session = Session(peer=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", events=Subscriptions())
        if kind == "blocked":
            session.peer = self.blocked
        elif kind in ("full", "reader"):
            session.user = User(kind, FULL if kind == "full" else READ)
            session.token = self.auth.issue_token(session.user)
        return session

    def snapshot(self, session: Session) -> Any:
        jobs = sorted((job.id, job.state, job.queue) for job in self.dispatcher.jobs.values())
        subscriptions = session.events.names if isinstance(session.events, Subscriptions) else set()
        return jobs, len(self.auth.tokens), session.user, session.token, frozenset(subscriptions)

    def handle(self, session: Session, data: bytes) -> Any:
        results: list[Any] = []
        self.router.handle_bytes(session, data).addBoth(results.append)
        assert len(results) == 1, "the reply is ready at once in memory, and comes once"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def reset(self) -> None:
        self.dispatcher.kill(list(self.dispatcher.jobs))
        assert not self.dispatcher.jobs


_world: World | None = None


def world() -> World:
    global _world
    if _world is None:
        _world = World()
    return _world


def check_batch(w: World, session: Session, batch: list[bytes]) -> None:
    for data in batch:
        before = w.snapshot(session)
        reply = w.handle(session, data)
        replies, message = expectation(data, w.router.max_message_bytes)
        if not replies:
            assert reply is None, reply
            continue
        check_envelope(reply, message)
        if reply["name"] == "error":
            assert w.snapshot(session) == before, (data, reply)
    # Still usable afterwards.
    reply = w.handle(session, b'{"namespace": "rpc", "name": "identify", "id": "after"}')
    check_envelope(reply, {"namespace": "rpc", "id": "after"})
    if session.peer == w.blocked:
        assert reply["args"]["code"] == 403
    else:
        assert reply["name"] == "response"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), batch=batches)
def test_router_fuzz_in_memory(kind: str, batch: list[bytes]) -> None:
    w = world()
    try:
        check_batch(w, w.session(kind), batch)
    finally:
        w.reset()


def test_fuzz_world_can_run_and_kill() -> None:
    """The in-memory world is not trivially rejecting everything."""
    w = world()
    session = w.session("full")
    reply = w.handle(session, json.dumps({"namespace": "rpc", "name": "dispatcher", "id": "r", "args": {
        "action": "run", "x": "true"}}).encode())
    assert reply["args"] == {"started": ["x"]}
    assert w.dispatcher.jobs["x"].state == "running"
    reply = w.handle(session, json.dumps({"namespace": "rpc", "name": "dispatcher", "id": "k", "args": {
        "action": "kill", "job_id": "x"}}).encode())
    assert reply["args"]["killed"]["jobs"] == ["x"]
    reader = w.session("reader")
    reply = w.handle(reader, json.dumps({"namespace": "rpc", "name": "dispatcher", "id": "r", "args": {
        "action": "run", "y": "true"}}).encode())
    assert reply["args"]["code"] == 403 and "y" not in w.dispatcher.jobs


# A sample through the real transports.


async def check_over_websocket(server: Any, kind: str, batch: list[bytes]) -> None:
    client = await WSClient.connect(server.ws_port)
    try:
        if kind != "anonymous":
            # A token of its own: an auth_clear in the batch revokes it.
            token = server.router.auth.issue_token(User(kind, FULL if kind == "full" else READ))
            reply = await client.call("auth_token", {"token": token})
            assert reply["name"] == "response"
        expected = []
        for data in batch:
            replies, message = expectation(data, server.router.max_message_bytes)
            try:
                data.decode("utf-8")
                binary = False
            except UnicodeDecodeError:
                binary = True  # a text frame must be UTF-8; a binary one is answered 400
            client.send_raw(data, binary=binary)
            if replies:
                expected.append(message)
        client.send_raw(b'{"namespace": "rpc", "name": "identify", "id": "sentinel"}')
        got = []
        while (sentinel := await client.next_unmatched()).get("id") != "sentinel":
            got.append(sentinel)
        # Exactly one reply per request, in order; none for auth_clear.
        assert len(got) == len(expected), (batch, got)
        for reply, message in zip(got, expected, strict=True):
            check_envelope(reply, message)
        assert sentinel["name"] == "response", ("the connection is still usable", sentinel)
    finally:
        await client.close()


async def check_over_rest(server: Any, batch: list[bytes], credentials: tuple[str, str] | None) -> None:
    for data in batch:
        _, message = expectation(data, server.router.max_message_bytes)
        if not isinstance(message, dict):
            continue
        namespace, name = message.get("namespace"), message.get("name")
        if not isinstance(namespace, str) or not isinstance(name, str) or not namespace or not name:
            continue
        path = f"/{quote(namespace, safe='')}/{quote(name, safe='')}"
        body = message.get("args")
        status, parsed, _ = await server.rest(None if body is None else body, path=path, auth=credentials)
        assert status != 500
        if status == 204:
            assert (namespace, name) == ("rpc", "auth_clear") and parsed is None
            continue
        assert isinstance(parsed, dict) and set(parsed) == {"args"}, parsed
        if status >= 400:
            envelope = {"namespace": "rpc", "name": "error", "id": "", "args": parsed["args"]}
            check_envelope(envelope, None)
            assert parsed["args"]["code"] == status
    status, _, _ = await server.rest({}, path="/rpc/identify", auth=None)
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_router_fuzz_over_real_transports(make_server: Any, tmp_path: Any) -> None:
    # No login blocking here (the in-memory run covers it): every example would
    # otherwise come from one blocked 127.0.0.1 after a few wrong passwords.
    server = await make_server("--max-failed-logins", "1000000")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    server.dispatcher.environ = {"PATH": str(empty)}  # no generated command can find a program
    server.add_user("full", "full", "pw")
    server.add_user("reader", "read", "pw")

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(kind=st.sampled_from(["anonymous", "full", "reader"]), batch=batches)
    def check(kind: str, batch: list[bytes]) -> None:
        credentials = (kind, "pw") if kind != "anonymous" else None

        async def both() -> None:
            await check_over_websocket(server, kind, batch)
            await check_over_rest(server, batch, credentials)

        # Hypothesis drives from a thread of its own; each example runs on the reactor.
        blockingCallFromThread(reactor, lambda: with_timeout(ensureDeferred(both()), 60))

    await deferToThread(check)
    # Whatever ran, the server is well and stops cleanly (the fixture stops it).
    status, _, _ = await server.rest({"action": "list"})
    assert status == 200
