"""
What stands between a command's ``ProcessProtocol`` and its backend's
transport: ``Leader`` tells the tracker when the command's leader starts and
exits, and hands the protocol a ``TreeTransport``, whose ``signalProcess``
reaches every process of the command's job (its process groups, setsid'd
and double-forked descendants, orphans), found by the tracker, not only the
command's own process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .backends import signal_number
from .proctable import JobTree

if TYPE_CHECKING:
    from .procs import ProcessTracker


@implementer(IProcessTransport)
class TreeTransport:
    """
    A command's transport whose ``signalProcess`` signals its job's whole
    tree: the tracker finds the tree's processes first and signals them
    after (``SIGTERM`` followed by ``SIGCONT``; ``SIGKILL`` after freezing
    the tree with ``SIGSTOP``), in the next turn of the reactor, sharing one
    look through ``/proc`` with every job asking meanwhile.  It reaches what
    the command left running even once the command itself has exited.
    Everything else is the backend's transport's.
    """

    def __init__(self, command: IProcessTransport, tracker: ProcessTracker, tree: JobTree) -> None:
        self.command = command
        self.tracker = tracker
        self.tree = tree

    @property
    def pid(self) -> int | None:
        pid: int | None = self.command.pid
        return pid

    def signalProcess(self, signalID: str | int) -> None:
        self.tracker.sweep(self.tree, signal_number(signalID))

    def closeStdin(self) -> None:
        self.command.closeStdin()

    def closeStdout(self) -> None:
        self.command.closeStdout()

    def closeStderr(self) -> None:
        self.command.closeStderr()

    def closeChildFD(self, descriptor: int) -> None:
        self.command.closeChildFD(descriptor)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.command.writeToChild(childFD, data)

    def write(self, data: bytes) -> None:
        self.command.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.command.writeSequence(data)

    def loseConnection(self) -> None:
        self.command.loseConnection()

    def getPeer(self) -> Any:
        return self.command.getPeer()

    def getHost(self) -> Any:
        return self.command.getHost()


class Leader(ProcessProtocol):
    """Between the backend and a command's protocol: keeps the tracker told of the command's leader."""

    def __init__(self, tracker: ProcessTracker, tree: JobTree, protocol: ProcessProtocol) -> None:
        self.tracker = tracker
        self.tree = tree
        self.protocol = protocol
        self.pid: int | None = None

    def makeConnection(self, transport: IProcessTransport) -> None:
        self.transport = transport
        self.connected = 1
        self.pid = transport.pid
        if self.pid is not None:
            self.tracker.leader_started(self.tree, self.pid)
        self.protocol.makeConnection(TreeTransport(transport, self.tracker, self.tree))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.protocol.childDataReceived(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        self.protocol.childConnectionLost(childFD)

    def processExited(self, reason: Failure) -> None:
        self._gone()
        self.protocol.processExited(reason)

    def processEnded(self, reason: Failure) -> None:
        self._gone()
        self.protocol.processEnded(reason)

    def _gone(self) -> None:
        if self.pid is not None:
            self.tracker.leader_exited(self.pid)
            self.pid = None



