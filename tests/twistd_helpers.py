"""
Running the real server as an administrator does: ``twistd -n sysadm-dispatch``
in a process of its own, on free ports, with its output collected.
"""

from __future__ import annotations

import socket
from typing import Any

from conftest import PYTHON, poll
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

TWISTD = ["-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwistdOutput(ProcessProtocol):
    """Collects everything the process writes; ``ended`` fires with the exit reason."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[Any] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


def spawn_twistd(args: list[str], env: dict[str, str], cwd: str) -> tuple[Any, TwistdOutput]:
    """``twistd -n --pidfile= *args`` (args start with the plugin name), and its output collector."""
    proto = TwistdOutput()
    process = reactor.spawnProcess(proto, PYTHON, [PYTHON, *TWISTD, "-n", "--pidfile=", *args], env=env, path=cwd)
    return process, proto


async def wait_port(port: int, proto: TwistdOutput, interval: float = 0.05) -> None:
    """Wait until ``port`` accepts connections; fail at once if twistd has exited."""

    def up() -> bool:
        if proto.ended.called:
            raise AssertionError(f"twistd exited early:\n{proto.output.decode(errors='replace')}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    await poll(up, 30, interval)


async def ensure_stopped(process: Any, proto: TwistdOutput) -> None:
    """At the end of a test, however it ended: a twistd still running is killed and waited for."""
    if not proto.ended.called:
        process.signalProcess("KILL")
        await proto.ended
