"""
Running the installed ``sysadm-dispatch`` client as a process of its own,
against a server the test started, without blocking the test's reactor.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from conftest import TIMEOUT, poll, with_timeout
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

_SCRIPT = shutil.which("sysadm-dispatch", path=os.path.dirname(sys.executable))
#: The console script installed next to this interpreter (``python -m`` when absent).
CLIENT = [_SCRIPT] if _SCRIPT else [sys.executable, "-c", "import sys; from sysadm_dispatch.cli import main; "
                                                      "sys.exit(main())"]


class ClientRun(ProcessProtocol):
    """One client process: what it writes (stdout and stderr apart) and how it ended."""

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self.transport: Any = None

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.stdout += data
        else:
            self.stderr += data

    def processEnded(self, reason: Any) -> None:
        self.exit_code = reason.value.exitCode
        self.ended.callback(self.exit_code)

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    async def wait_for(self, text: str, stream: str = "stdout", seconds: float = TIMEOUT) -> None:
        """Until ``text`` has been written on ``stream``; fails if the process ends first."""

        def seen() -> bool:
            if text in (self.out if stream == "stdout" else self.err):
                return True
            if self.ended.called:
                raise AssertionError(f"the client ended ({self.exit_code}) before writing {text!r}:\n"
                                     f"stdout: {self.out}\nstderr: {self.err}")
            return False

        await poll(seen, seconds)

    async def finish(self, seconds: float = TIMEOUT) -> int | None:
        return await with_timeout(self.ended, seconds)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def signal(self, name: str) -> None:
        self.transport.signalProcess(name)

    def kill_if_running(self) -> None:
        if not self.ended.called:
            self.transport.signalProcess("KILL")


def client_env(home: str, port: int | None = None, password: str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment: no config, no local server state, the given server and password."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "XDG_CONFIG_HOME": os.path.join(home, "config"),
        "XDG_STATE_HOME": os.path.join(home, "state"),
        "LANG": "C.UTF-8",
    }
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if port is not None:
        env["SYSADM_DISPATCH_URL"] = f"ws://127.0.0.1:{port}"
    if password is not None:
        env["SYSADM_DISPATCH_PASSWORD"] = password
    env.update(extra)
    return env


def start_client(args: list[str], env: dict[str, str], pty: bool = False) -> ClientRun:
    run = ClientRun()
    reactor.spawnProcess(run, CLIENT[0], [*CLIENT, *args], env=env, usePTY=pty)
    return run


async def client(args: list[str], env: dict[str, str], seconds: float = TIMEOUT) -> ClientRun:
    """Run the client to its end."""
    run = start_client(args, env)
    try:
        await run.finish(seconds)
    finally:
        run.kill_if_running()
    return run
