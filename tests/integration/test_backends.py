"""
The two ``spawn_process`` backends over real processes, as a
``ProcessProtocol`` sees them: their transports provide
``IProcessTransport``; output of stdout and stderr arrives in order on one
pipe; ``processExited`` then ``processEnded`` with Twisted's reasons; each
command leads a process group (and, under ``twisted``, a session) of its
own; and through a ``ProcessTracker``, ``signalProcess`` reaches what left
the group.
"""

from __future__ import annotations

import gc
import os
import weakref
from typing import Any

import pytest
import pytest_twisted
from conftest import SPAWNER_NAMES, pid_alive, poll, with_timeout
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from sysadm_dispatch.process.backends import spawn_process
from sysadm_dispatch.process.procs import ProcessTracker
from sysadm_dispatch.process.proctable import read_stat
from sysadm_dispatch.process.spawn import EXIT_NOT_FOUND, SpawnError
from sysadm_dispatch.process.tracked import TreeTransport

ensure = pytest_twisted.ensureDeferred
both = pytest.mark.parametrize("spawner", SPAWNER_NAMES)
ENV = dict(os.environ)


class Recorder(ProcessProtocol):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.output: list[tuple[int, bytes]] = []
        self.exited: Failure | None = None
        self.ended: Deferred[BaseException] = Deferred()
        self.pid: int | None = None
        self.text_at_exit = ""

    def connectionMade(self) -> None:
        self.events.append("connected")
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output.append((childFD, data))

    def processExited(self, reason: Failure) -> None:
        self.events.append("exited")
        self.text_at_exit = self.text()
        self.exited = reason

    def processEnded(self, reason: Failure) -> None:
        self.events.append("ended")
        self.ended.callback(reason.value)

    def text(self) -> str:
        return b"".join(data for _, data in self.output).decode()


@both
@ensure
async def test_output_exit_and_end_as_twisted_reports_them(spawner: str) -> None:
    proto = Recorder()
    transport = spawn_process(reactor, proto, "/bin/sh", ["sh", "-c", "echo out; echo err >&2; echo more; exit 3"],
                              ENV, spawner=spawner)
    assert verifyObject(IProcessTransport, transport)
    # Connected with its pid (it may have exited, and been reaped, by the time spawn_process returns).
    assert proto.transport is transport and proto.pid is not None
    reason = await with_timeout(proto.ended)
    assert proto.events == ["connected", "exited", "ended"]
    assert proto.text() == "out\nerr\nmore\n" and {fd for fd, _ in proto.output} == {1}  # one pipe, in order
    assert proto.text_at_exit == proto.text()  # the pipe was read to its end before the exit was told
    assert isinstance(reason, ProcessTerminated) and reason.exitCode == 3
    assert proto.exited is not None and proto.exited.value.exitCode == 3
    assert transport.pid is None
    with pytest.raises(ProcessExitedAlready):
        transport.signalProcess("TERM")


@both
@ensure
async def test_success_is_process_done_and_path_is_the_working_directory(spawner: str, tmp_path: Any) -> None:
    proto = Recorder()
    spawn_process(reactor, proto, "pwd", ["pwd"], ENV, str(tmp_path), spawner=spawner)
    reason = await with_timeout(proto.ended)
    assert isinstance(reason, ProcessDone)
    assert proto.text().strip() == os.path.realpath(tmp_path)


@both
@ensure
async def test_each_command_leads_its_group_and_signal_process_ends_it(spawner: str) -> None:
    proto = Recorder()
    transport = spawn_process(reactor, proto, "sleep", ["sleep", "300"], ENV, spawner=spawner)
    pid = transport.pid
    await poll(lambda: read_stat(pid) is not None and read_stat(pid).pgrp == pid)
    info = read_stat(pid)
    if spawner == "twisted":
        assert info.session == pid
    transport.signalProcess("TERM")
    reason = await with_timeout(proto.ended)
    assert isinstance(reason, ProcessTerminated) and reason.signal == 15
    assert not pid_alive(pid)


@both
def test_a_missing_program_raises_spawn_error_with_a_shell_s_code(spawner: str) -> None:
    with pytest.raises(SpawnError) as info:
        spawn_process(reactor, Recorder(), "/nonexistent/program", ["program"], ENV, spawner=spawner)
    assert info.value.exit_code == EXIT_NOT_FOUND


@both
@ensure
async def test_through_the_tracker_signal_process_reaches_a_descendant_that_left_the_group(
        spawner: str, tmp_path: Any) -> None:
    tracker = ProcessTracker(reactor, spawner=spawner)
    tree = tracker.new_tree()
    pids = tmp_path / "pids"
    proto = Recorder()
    tracker.spawn(tree, proto, "/bin/sh", ["sh", "-c", f"setsid sleep 300 & echo $! > {pids}; wait"], ENV)
    await poll(lambda: pids.exists() and pids.read_text().strip())
    escaped = int(pids.read_text())
    await poll(lambda: read_stat(escaped) is not None and read_stat(escaped).session == escaped)
    assert proto.transport is not None
    proto.transport.signalProcess("TERM")
    await with_timeout(proto.ended)
    await poll(lambda: not pid_alive(escaped))
    assert tracker.quick_empty(tree)
    tracker.forget(tree)


@both
@ensure
async def test_an_ended_command_is_freed_without_the_cycle_collector(spawner: str) -> None:
    # Once it has ended, nothing of a command refers back to its protocol or
    # transports: each short command a server runs is freed when dropped.
    tracker = ProcessTracker(reactor, spawner=spawner)
    tree = tracker.new_tree()
    proto = Recorder()
    tracker.spawn(tree, proto, "/bin/true", ["true"], ENV)
    await with_timeout(proto.ended)
    await deferLater(reactor, 0, lambda: None)  # out of the call that told the end
    assert isinstance(proto.transport, TreeTransport)
    refs = [weakref.ref(proto), weakref.ref(proto.transport), weakref.ref(proto.transport.command)]
    gc.disable()
    try:
        del proto
        assert [ref() for ref in refs] == [None, None, None]
    finally:
        gc.enable()
    tracker.forget(tree)
