"""
A changed users file ends sessions at once: after ``sysadm-dispatch user add
--replace`` or ``user remove`` (the real console script) against a running
server, the user's tokens stop working and its WebSocket sessions are told
(an error with code 401) and lose their subscriptions, without waiting for
the next request.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import pytest_twisted
from conftest import Server, poll, with_timeout
from twisted.internet import utils

ensure = pytest_twisted.ensureDeferred

SCRIPT = shutil.which("sysadm-dispatch", path=os.path.dirname(sys.executable))


async def console(server: Server, *argv: str, password: str = "") -> None:
    """The installed console script, on the server's users file; the password on a pipe."""
    assert SCRIPT, "the sysadm-dispatch script is installed beside this interpreter"
    out, err, code = await with_timeout(utils.getProcessOutputAndValue(
        "/bin/sh", ["-c", 'printf "%s\\n" "$PW" | "$@"', "sh", SCRIPT, "user", *argv, "--users",
                    server.options["users"]],
        env={**os.environ, "PW": password},
    ), 60)
    assert code == 0, (out, err)


async def rest_token(server: Server, name: str, password: str) -> str:
    status, body, _ = await server.rest({"username": name, "password": password}, path="/rpc/auth", auth=None)
    assert status == 200, body
    return str(body["args"][0])


async def subscribed(server: Server, name: str, password: str) -> Any:
    client = await server.ws((name, password))
    reply = await client.call("subscribe", ["dispatcher"], namespace="events")
    assert reply["name"] == "response", reply
    return client


async def ended(client: Any) -> dict[str, Any]:
    """The unsolicited 401 that ends a session (the users file is polled every 2 s)."""
    message = await with_timeout(client.unmatched.get(), 20)
    assert message["name"] == "error" and message["args"]["code"] == 401, message
    return message


async def no_events_for(client: Any, server: Server) -> None:
    """A job runs to its end; ``client`` gets none of its events."""
    job_id = f"after-{id(client)}"
    [job] = await server.run({job_id: "echo secret-output"})
    await server.wait_finished(job)
    reply = await client.call("identify")  # a round trip after the events went out
    assert reply["name"] == "response"
    leaked = [e for e in client.events.pending if e["args"].get("process_id") == job_id]
    assert leaked == [], leaked


@ensure
async def test_password_change_ends_tokens_and_sessions(server: Server) -> None:
    await console(server, "add", "bob", "--role", "full", password="first-pass")
    await poll(lambda: server.router.auth.checker.role_of("bob") == "full", 20)
    token = await rest_token(server, "bob", "first-pass")
    client = await subscribed(server, "bob", "first-pass")
    other = await subscribed(server, "admin", server.admin_password)

    await console(server, "add", "bob", "--role", "full", "--replace", password="second-pass")
    message = await ended(client)
    assert "bob" in message["args"]["detail"]
    # The old token is refused at once, and the session holds no subscription.
    status, _, _ = await server.rest({"action": "list"}, auth=None, headers={"Authorization": f"Bearer {token}"})
    assert status == 401
    reply = await client.call("dispatcher", {"action": "list"})
    assert reply["args"]["code"] == 401
    await no_events_for(client, server)
    assert await other.next_event()  # the other user's session goes on
    # The new password works.
    assert await rest_token(server, "bob", "second-pass")


@ensure
async def test_role_change_and_removal_end_sessions(server: Server) -> None:
    await console(server, "add", "carol", "--role", "full", password="carol-pass")
    await console(server, "add", "dave", "--role", "read", password="dave-pass")
    await poll(lambda: server.router.auth.checker.role_of("dave") == "read", 20)
    carol, dave = await subscribed(server, "carol", "carol-pass"), await subscribed(server, "dave", "dave-pass")
    carol_token, dave_token = await rest_token(server, "carol", "carol-pass"), await rest_token(server, "dave", "dave-pass")

    # Carol keeps her password and becomes read-only: her sessions end too.
    await console(server, "add", "carol", "--role", "read", "--replace", password="carol-pass")
    await ended(carol)
    status, _, _ = await server.rest({"action": "list"}, auth=None, headers={"Authorization": f"Bearer {carol_token}"})
    assert status == 401
    await no_events_for(carol, server)

    # Dave is removed, then added back with the same password: his old token
    # (not used meanwhile) stays dead.
    await console(server, "remove", "dave")
    await ended(dave)
    await console(server, "add", "dave", "--role", "read", password="dave-pass")
    await poll(lambda: server.router.auth.checker.role_of("dave") == "read", 20)
    status, _, _ = await server.rest({"action": "list"}, auth=None, headers={"Authorization": f"Bearer {dave_token}"})
    assert status == 401
    await no_events_for(dave, server)
