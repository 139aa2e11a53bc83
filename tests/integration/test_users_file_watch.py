"""
The users file is watched: a user added, or removed, with the console script
while the server runs can log in, or no longer can, without a restart
(README.rst, "Users").
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import pytest_twisted
from conftest import REPO, Server, deferLater, with_timeout
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

_SCRIPT = shutil.which("sysadm-dispatch", path=os.path.dirname(sys.executable))
#: The installed console script, as an administrator runs it (the module where none is installed).
SCRIPT = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "sysadm_dispatch.cli"]


class _Collect(ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.output = b""
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


async def console(*args: str, stdin: str = "") -> tuple[int, str]:
    """Run the console script without blocking the reactor (the server runs in it)."""
    proto = _Collect(stdin.encode())
    reactor.spawnProcess(proto, SCRIPT[0], [*SCRIPT, *args], env=dict(os.environ, PYTHONPATH=REPO))
    code = await with_timeout(proto.ended, 60)
    return code, proto.output.decode(errors="replace")


@pytest_twisted.ensureDeferred
async def test_a_user_added_and_removed_with_the_console_script_is_noticed(make_server: Any) -> None:
    # Failed attempts while waiting must not block the test's address.
    server: Server = await make_server("--max-failed-logins", "1000")
    users = server.options["users"]

    async def login_status() -> int:
        status, _, _ = await server.rest({"action": "list"}, auth=("carol", "carol's pw"))
        return status

    assert await login_status() == 401
    code, output = await console("user", "add", "carol", "--role", "read", "--users", users, stdin="carol's pw\n")
    assert code == 0, output

    async def wait_for(status: int) -> None:
        # The server looks at the file every 2 s: polled, with a bound.
        deadline = reactor.seconds() + 15
        while (seen := await login_status()) != status:
            assert reactor.seconds() < deadline, f"login still answers {seen} after 15 s"
            await deferLater(0.25)

    await wait_for(200)
    code, output = await console("user", "remove", "carol", "--users", users)
    assert code == 0, output
    await wait_for(401)
