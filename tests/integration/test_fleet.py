"""
Fleet mode for real: a Crossbar.io router started with the shipped
configuration, two ``twistd`` servers joined to it as hosts (one by ticket,
one by WAMP-CRA), and clients calling them through the router.  One router
and one pair of hosts serve the whole module (the router starts slowly);
the router restart comes last.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions, SubscribeOptions
from client_helpers import client, client_env, start_client
from conftest import WSClient, deferLater, poll, with_timeout
from fleet_helpers import CONTRIB, PRINCIPALS, Host, Router, call, crossbar_program, join, wait_registered
from twisted.internet import reactor

ensure = pytest_twisted.ensureDeferred
HOSTS = ("h1", "h2")


class Fleet:
    def __init__(self, router: Router, hosts: dict[str, Host]) -> None:
        self.router = router
        self.hosts = hosts


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: Any) -> Iterator[Fleet]:
    program = crossbar_program()
    base = tmp_path_factory.mktemp("fleet")
    router = Router(program, str(base / "router"))
    hosts = {name: Host(name, str(base / name), router) for name in HOSTS}
    try:
        router.start()
        for host in hosts.values():
            host.start()
        yield Fleet(router, hosts)
    finally:
        for host in hosts.values():
            host.stop()
        router.stop()


async def ws_login(host: Host) -> WSClient:
    client = await WSClient.connect(host.ws_port)
    reply = await client.call("auth", {"username": "admin", "password": host.admin_password})
    assert reply["name"] == "response", reply
    return client


async def ws_args(client: WSClient, name: str, args: Any) -> Any:
    reply = await client.call(name, args)
    assert reply["name"] == "response", reply
    return reply["args"]


async def finished(joined: Any, host: str, job_id: str, seconds: float = 30) -> dict[str, Any]:
    """The job's record through the router, once it has finished."""
    deadline = reactor.seconds() + seconds
    while True:
        record = await call(joined, host, "rpc", "logs", {"action": "job", "job_id": job_id})
        if record.get("state") == "finished":
            return dict(record)
        if reactor.seconds() > deadline:
            raise AssertionError(f"{job_id} on {host} did not finish within {seconds} s: {record}")
        await deferLater(0.05)


def sysadm_error(e: ApplicationError) -> tuple[str, int, str]:
    return e.error, e.kwargs["code"], e.kwargs["detail"]


@ensure
async def test_calls_through_the_router_match_the_websocket_answers(fleet: Fleet) -> None:
    op = await join(fleet.router, "op")
    try:
        for name, host in fleet.hosts.items():
            await wait_registered(op, name)
            ws = await ws_login(host)
            try:
                started = await call(op, name, "rpc", "dispatcher",
                                     {"action": "run", f"echo-{name}": ["echo hello from " + name]})
                assert started == {"started": [f"echo-{name}"]}
                record = await finished(op, name, f"echo-{name}")
                assert "hello from " + name in str(record)
                assert record == await ws_args(ws, "logs", {"action": "job", "job_id": f"echo-{name}"})

                await call(op, name, "rpc", "dispatcher", {"action": "run", f"sleep-{name}": ["sleep 30"]})
                listed = await call(op, name, "rpc", "dispatcher", {"action": "list"})
                assert f"sleep-{name}" in str(listed)
                assert listed == await ws_args(ws, "dispatcher", {"action": "list"})
                killed = await call(op, name, "rpc", "dispatcher", {"action": "kill", "job_id": [f"sleep-{name}", "nope"]})
                assert killed == {"killed": {"jobs": [f"sleep-{name}"], "not_found": ["nope"]}}
                after = await ws_args(ws, "dispatcher", {"action": "list"})
                assert f"sleep-{name}" not in str(after)
                assert await call(op, name, "rpc", "identify") == await ws_args(ws, "identify", None)
            finally:
                ws.protocol.sendClose(1000)  # type: ignore[union-attr]
    finally:
        await op.close()


@ensure
async def test_viewer_may_look_but_not_run_or_kill(fleet: Fleet) -> None:
    vw = await join(fleet.router, "vw")
    try:
        await wait_registered(vw, "h1")
        assert "jobs" in await call(vw, "h1", "rpc", "dispatcher", {"action": "list"})
        assert await call(vw, "h1", "rpc", "query") == {"rpc/dispatcher": "read", "rpc/logs": "read"}
        for args in ({"action": "run", "v1": ["true"]}, {"action": "kill", "job_id": "v1"}):
            with pytest.raises(ApplicationError) as refused:
                await call(vw, "h1", "rpc", "dispatcher", args)
            error, code, detail = sysadm_error(refused.value)
            assert (error, code) == ("sysadm.error", 403)
            assert "read-only" in detail
            assert refused.value.kwargs["message"] == "Forbidden"
        # The same validation and errors as the other transports.
        with pytest.raises(ApplicationError) as bad:
            await call(vw, "h1", "rpc", "dispatcher", {"action": "fly"})
        assert sysadm_error(bad.value)[1:] == (400, "dispatcher: unknown action 'fly' (list, run or kill)")
        with pytest.raises(ApplicationError) as login:
            await call(vw, "h1", "rpc", "auth", {"username": "admin", "password": "x"})
        assert sysadm_error(login.value)[1] == 400
        with pytest.raises(ApplicationError) as shape:
            await with_timeout(vw.session.call("sysadm.h1.rpc", "not an object"))
        assert sysadm_error(shape.value)[1] == 400
    finally:
        await vw.close()


@ensure
async def test_a_rogue_host_cannot_take_another_hosts_name(fleet: Fleet) -> None:
    rogue = await join(fleet.router, "rogue")
    try:
        # A name whose host is away (the router refuses a name in use before it asks the authorizer).
        for uri in ("sysadm.h3.rpc", "sysadm.h1x.rpc", "sysadm.h3.events"):
            with pytest.raises(ApplicationError) as refused:
                await with_timeout(rogue.session.register(lambda *a, **k: None, uri))
            assert refused.value.error == "wamp.error.not_authorized"
        with pytest.raises(ApplicationError):
            await with_timeout(rogue.session.register(lambda *a, **k: None, "sysadm.h1.rpc"))
        with pytest.raises(ApplicationError) as published:
            await with_timeout(rogue.session.publish("sysadm.h1.events", {"forged": True},
                                                     options=PublishOptions(acknowledge=True)))
        assert published.value.error == "wamp.error.not_authorized"
        # Nor call a host: hosts only answer.
        with pytest.raises(ApplicationError) as called:
            await with_timeout(rogue.session.call("sysadm.h1.rpc", {"namespace": "rpc", "name": "identify"}))
        assert called.value.error == "wamp.error.not_authorized"
        # Under its own name it may.
        registration = await with_timeout(rogue.session.register(lambda *a, **k: None, "sysadm.rogue.rpc"))
        assert registration.active
        await with_timeout(rogue.session.publish("sysadm.rogue.events", {}, options=PublishOptions(acknowledge=True)))
    finally:
        await rogue.close()


@ensure
async def test_events_from_every_host_reach_one_subscriber(fleet: Fleet) -> None:
    op = await join(fleet.router, "op")
    try:
        seen: dict[str, list[dict[str, Any]]] = {name: [] for name in HOSTS}

        def event(args: Any, details: Any = None) -> None:
            seen[details.topic.split(".")[1]].append(args)

        await with_timeout(op.session.subscribe(event, "sysadm..events",
                                                options=SubscribeOptions(match="wildcard", details_arg="details")))
        for name in HOSTS:
            await wait_registered(op, name)
            await call(op, name, "rpc", "dispatcher", {"action": "run", f"ev-{name}": ["echo ev"]})
        await poll(lambda: all(f"ev-{name}" in str(seen[name]) and "finished" in str(seen[name]) for name in HOSTS))
    finally:
        await op.close()


def test_the_authorizer_confines_hosts_to_their_own_name() -> None:
    spec = importlib.util.spec_from_file_location("sysadm_router", os.path.join(CONTRIB, "sysadm_router.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    agent = {"authid": "web1", "authrole": "agent"}
    allow = lambda session, uri, action: module.authorize(session, uri, action, {})["allow"]  # noqa: E731
    assert allow(agent, "sysadm.web1.rpc", "register")
    assert allow(agent, "sysadm.web1.events", "publish")
    assert not allow(agent, "sysadm.web2.rpc", "register")
    assert not allow(agent, "sysadm.web10.rpc", "register")
    assert not allow(agent, "sysadm.web1.rpc", "call")
    assert not allow({"authid": "a.b", "authrole": "agent"}, "sysadm.a.b.rpc", "register")
    operator = {"authid": "alice", "authrole": "operator"}
    assert module.authorize(operator, "sysadm.web1.rpc", "call", {}) == {"allow": True, "disclose": True,
                                                                          "cache": True}
    assert allow(operator, "sysadm..events", "subscribe")
    assert allow(operator, "wamp.session.list", "call")
    assert not allow(operator, "sysadm.web1.rpc", "register")
    assert not allow(operator, "sysadm.web1.events", "publish")
    assert not allow(operator, "wamp.session.kill", "call")
    assert not allow({"authid": "x", "authrole": "anonymous"}, "sysadm.web1.rpc", "call")


@ensure
async def test_cli_reaches_every_host(fleet: Fleet, tmp_path: Any) -> None:
    home = tmp_path / "home"
    home.mkdir()
    ticket = tmp_path / "op-ticket"
    ticket.write_text(PRINCIPALS["op"]["ticket"] + "\n")
    env = client_env(str(home), SYSADM_DISPATCH_ROUTER=fleet.router.url, SYSADM_DISPATCH_ROUTER_USER="op")
    op = await join(fleet.router, "op")
    try:
        for name in HOSTS:
            await wait_registered(op, name)
    finally:
        await op.close()
    hosts = await client(["hosts", "--json", "--router-ticket-file", str(ticket)], env)
    assert hosts.exit_code == 0, hosts.err
    assert {h["host"] for h in json.loads(hosts.out)} >= set(HOSTS)

    env["SYSADM_DISPATCH_ROUTER_TICKET"] = PRINCIPALS["op"]["ticket"]
    ran = await client(["run", "--all", "echo fleet-run", "sh -c 'exit 3'"], env)
    assert ran.exit_code == 3, (ran.out, ran.err)
    assert sorted(line for line in ran.out.splitlines()) == [f"{name} | fleet-run" for name in HOSTS]
    assert all(f"{name} | ==> [1/2] echo fleet-run" in ran.err for name in HOSTS), ran.err

    # The worst exit code: one host answers, the other is not there (69).
    mixed = await client(["run", "--host", "h1", "--host", "h9", "echo one"], env)
    assert mixed.exit_code == 69, (mixed.out, mixed.err)
    assert mixed.out.splitlines() == ["h1 | one"]
    assert "h9 is not online" in mixed.err

    started = await client(["run", "--all", "--detach", "--id", "cli-sleep", "sleep 30"], env)
    assert started.exit_code == 0, started.err
    listed = await client(["list", "--all"], env)
    rows = [line.split() for line in listed.out.splitlines()]
    assert rows[0][:3] == ["HOST", "QUEUE", "ID"]
    assert sorted(row[0] for row in rows[1:] if row[2] == "cli-sleep") == list(HOSTS)
    killed = await client(["kill", "--all", "cli-sleep"], env)
    assert killed.exit_code == 0, killed.err
    assert sorted(killed.out.splitlines()) == [f"{name} | killed cli-sleep" for name in HOSTS]
    watcher = start_client(["watch", "--all"], env)
    try:
        await watcher.wait_for("h2 | watching", stream="stderr")
        await watcher.wait_for("h1 | watching", stream="stderr")
        await client(["run", "--all", "--detach", "--id", "cli-watched", "echo watched"], env)
        for name in HOSTS:
            await watcher.wait_for(f"{name} | ")
        await poll(lambda: all(any(line.startswith(f"{name} | ") and "cli-watched" in line and " finished " in line
                                   for line in watcher.out.splitlines()) for name in HOSTS))
        watcher.signal("INT")
        await watcher.finish()
    finally:
        watcher.kill_if_running()
    viewer = await client(["run", "--host", "h1", "true"], dict(env, SYSADM_DISPATCH_ROUTER_USER="vw",
                                                                 SYSADM_DISPATCH_ROUTER_TICKET="ticket-vw"))
    assert viewer.exit_code == 77, viewer.err
    assert "read-only" in viewer.err


# Last: the router goes away and comes back.


@ensure
async def test_router_restart_hosts_come_back_and_keep_their_jobs(fleet: Fleet) -> None:
    op = await join(fleet.router, "op")
    await wait_registered(op, "h1")
    await call(op, "h1", "rpc", "dispatcher", {"action": "run", "across": ["sleep 1", "echo across"]})
    await op.close()
    fleet.router.stop()
    ws = await ws_login(fleet.hosts["h1"])
    try:
        # Run while the router is away: the host goes on serving its own clients.
        await ws_args(ws, "dispatcher", {"action": "run", "meanwhile": ["echo meanwhile"], "later": ["sleep 30"]})
    finally:
        ws.protocol.sendClose(1000)  # type: ignore[union-attr]
    fleet.router.start()
    op = await join(fleet.router, "op")
    try:
        for name in HOSTS:
            await wait_registered(op, name)
        listed = await call(op, "h1", "rpc", "dispatcher", {"action": "list"})
        assert "later" in str(listed)
        for job_id, text in (("meanwhile", "meanwhile"), ("across", "across")):
            record = await finished(op, "h1", job_id)
            assert text in str(record)
        history = await call(op, "h1", "rpc", "logs", {"action": "read_logs"})
        assert "meanwhile" in str(history) and "across" in str(history)
        await call(op, "h1", "rpc", "dispatcher", {"action": "kill", "job_id": "later"})
    finally:
        await op.close()
