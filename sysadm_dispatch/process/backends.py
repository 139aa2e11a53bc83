"""
The two ways a command is started, each giving its ``ProcessProtocol`` a
transport that provides ``IProcessTransport``, the way
``reactor.spawnProcess`` does:

* ``fast`` (``spawn_fast``): ``os.posix_spawn`` with ``setpgroup`` (a
  session of its own when the server has a controlling terminal), the exit
  noticed through a pidfd (``watch.ExitWatcher``).  Linux.
* ``twisted`` (``spawn_twisted``): ``reactor.spawnProcess`` itself, with
  util-linux ``setsid`` in front so that the command leads a session (and so
  a process group) of its own.  Portable.

Under both, stdin is ``/dev/null`` and stdout and stderr share one pipe,
read by ``watch.OutputReader`` and delivered as ``childDataReceived(1,
data)``; ``processExited`` comes once the command has been reaped, and
``processEnded`` once, besides, every writer has closed the pipe.  What
differs between them is in docs/processes.rst.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IAddress, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..reactors import IProcessReactor
from .spawn import check_executable, in_directory, open_output_pipe, spawn, spawn_error
from .watch import ExitWatcher, OutputReader

#: What starts a session in front of a command under the ``twisted``
#: backend: util-linux ``setsid`` (it does not fork when, as here, its caller
#: leads no process group), or else this Python doing the same.
SESSION: list[str] = (
    [setsid, "--"] if (setsid := shutil.which("setsid")) else
    [sys.executable, "-c", "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])"]
)


def signal_number(signal_id: str | int) -> int:
    """``"TERM"``, ``"KILL"``... (as ``signalProcess`` takes them) or a number, as a signal number."""
    if isinstance(signal_id, str):
        return int(getattr(signal, f"SIG{signal_id}"))
    return int(signal_id)


def exit_reason(status: int | None) -> BaseException:
    """A ``waitpid`` status as Twisted reports it; None (lost: reaped elsewhere): a ``ProcessTerminated``, no code."""
    if status is None:
        return ProcessTerminated(None, None, None)
    if os.WIFSIGNALED(status):
        return ProcessTerminated(None, os.WTERMSIG(status), status)
    code = os.waitstatus_to_exitcode(status)
    return ProcessTerminated(code, None, status) if code else ProcessDone(status)


def _ignore_data(data: bytes) -> None:
    pass


def _nothing() -> None:
    pass


@implementer(IAddress)
class ProcessAddress:
    """The address of either end of a command's transport (there is none)."""


@implementer(IProcessTransport)
class PipedProcess:
    """
    A started command whose output is read from its pipe here; how its exit
    is noticed is the subclass's, which calls ``exited(status)``.
    """

    def __init__(self, reactor: IProcessReactor, protocol: ProcessProtocol, read_fd: int) -> None:
        self.reactor = reactor
        #: None once told ``processEnded`` (as Twisted's transports do).
        self.proto: ProcessProtocol | None = protocol
        #: None once the command has exited (as Twisted's transports do).
        self.pid: int | None = None
        self.status: int | None = None
        self._exited = False
        self._ended = False
        self._reason: Failure | None = None
        self.reader = OutputReader(reactor, read_fd, self._output, self._output_closed)

    def _output(self, data: bytes) -> None:
        if self.proto is not None:
            self.proto.childDataReceived(1, data)

    def _output_closed(self) -> None:
        if self.proto is not None:
            self.proto.childConnectionLost(1)
        self._maybe_ended()

    def exited(self, status: int | None) -> None:
        """The command was reaped (``status`` None: by someone else, its status lost)."""
        if self._exited:
            return
        # What the pipe holds now, and its end if no writer is left, is read
        # first: the command's output is then complete when it has exited,
        # and the end follows in the same turn of the reactor.
        self.reader.drain()
        self._exited = True
        self.pid = None
        self.status = status
        # One reason for both: ``processEnded`` is told the same.
        self._reason = Failure(exit_reason(status))
        if self.proto is not None:
            self.proto.processExited(self._reason)
        self._maybe_ended()

    def _maybe_ended(self) -> None:
        if self._exited and not self.reader.open and not self._ended:
            self._ended = True
            # Nothing more is told: the references back to this transport
            # go, so that it and its protocol are freed as soon as dropped,
            # not when the cycle collector next runs.
            proto, self.proto = self.proto, None
            self.reader.on_data = _ignore_data
            self.reader.on_closed = _nothing
            if proto is not None and self._reason is not None:
                proto.processEnded(self._reason)

    # IProcessTransport.

    def signalProcess(self, signalID: str | int) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        try:
            os.kill(self.pid, signal_number(signalID))
        except ProcessLookupError:
            raise ProcessExitedAlready() from None

    def closeStdin(self) -> None:
        """Its stdin is ``/dev/null``: nothing to close."""

    def closeStdout(self) -> None:
        self.reader.close()

    def closeStderr(self) -> None:
        self.reader.close()

    def closeChildFD(self, descriptor: int) -> None:
        if descriptor in (1, 2):
            self.reader.close()

    def writeToChild(self, childFD: int, data: bytes) -> None:
        raise KeyError(childFD)  # nothing of the command is written to

    def write(self, data: bytes) -> None:
        self.writeToChild(0, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.writeToChild(0, b"".join(data))

    def loseConnection(self) -> None:
        """Stop reading its output, even if something still holds the pipe."""
        self.reader.close()

    def getPeer(self) -> ProcessAddress:
        return ProcessAddress()

    def getHost(self) -> ProcessAddress:
        return ProcessAddress()


class FastProcess(PipedProcess):
    """A command started with ``posix_spawn``; its exit noticed through a pidfd (``ExitWatcher``)."""

    def __init__(self, reactor: IProcessReactor, protocol: ProcessProtocol, pid: int, read_fd: int) -> None:
        super().__init__(reactor, protocol, read_fd)
        self.pid = pid
        protocol.makeConnection(self)
        # Last: without pidfds the watcher may reap the command at once.
        self.watcher = ExitWatcher(reactor, pid, self.exited)


def spawn_fast(
    reactor: IProcessReactor,
    protocol: ProcessProtocol,
    executable: str,
    args: Sequence[str],
    env: Mapping[str, str],
    path: str | None = None,
) -> FastProcess:
    """Start a command with ``posix_spawn``, leading a process group of its own.  Raises ``SpawnError``."""
    executable, argv = in_directory(executable, args, path)
    read_fd, write_fd = open_output_pipe()
    try:
        pid = spawn(executable, argv, env, write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return FastProcess(reactor, protocol, pid, read_fd)


class TwistedProcess(PipedProcess):
    """A command started by ``reactor.spawnProcess``; its exit is what Twisted reports."""

    def connected(self, pid: int) -> None:
        self.pid = pid
        if self.proto is not None:
            self.proto.makeConnection(self)


class _Exit(ProcessProtocol):
    """Twisted's side of a ``TwistedProcess``: its output is on a pipe of ours, only its end matters here."""

    def __init__(self, owner: TwistedProcess) -> None:
        self.owner = owner
        self.process: IProcessTransport | None = None

    def makeConnection(self, transport: IProcessTransport) -> None:
        self.process = transport
        assert transport.pid is not None
        self.owner.connected(transport.pid)

    def processEnded(self, reason: Failure) -> None:
        self.owner.exited(getattr(reason.value, "status", None))


def spawn_twisted(
    reactor: IProcessReactor,
    protocol: ProcessProtocol,
    executable: str,
    args: Sequence[str],
    env: Mapping[str, str],
    path: str | None = None,
) -> TwistedProcess:
    """Start a command with ``reactor.spawnProcess``, leading a session of its own.  Raises ``SpawnError``."""
    if path is None:
        # What posix_spawn would say at once, said before ``setsid`` would
        # say it in the command's output.
        check_executable(executable, env)
    executable, argv = in_directory(executable, args, path)
    read_fd, write_fd = open_output_pipe()
    owner = TwistedProcess(reactor, protocol, read_fd)
    devnull = -1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        reactor.spawnProcess(_Exit(owner), SESSION[0], [*SESSION, executable, *argv[1:]], env=dict(env),
                             childFDs={0: devnull, 1: write_fd, 2: write_fd})
    except OSError as e:
        owner.reader.on_closed = lambda: None  # never started: nothing to tell its protocol
        owner.reader.close()
        raise spawn_error(argv[0], e, "/" not in executable) from None
    finally:
        os.close(write_fd)
        if devnull >= 0:
            os.close(devnull)
    return owner


Spawner = Callable[[IProcessReactor, ProcessProtocol, str, Sequence[str], Mapping[str, str], "str | None"],
                   IProcessTransport]

#: The backends, by the name ``--spawner`` takes.
SPAWNERS: dict[str, Spawner] = {"fast": spawn_fast, "twisted": spawn_twisted}
#: ``fast`` needs Linux's ``posix_spawn`` flags and pidfds; elsewhere, Twisted's own.
DEFAULT_SPAWNER = "fast" if sys.platform.startswith("linux") and hasattr(os, "posix_spawn") else "twisted"


def spawn_process(
    reactor: IProcessReactor,
    protocol: ProcessProtocol,
    executable: str,
    args: Sequence[str],
    env: Mapping[str, str],
    path: str | None = None,
    *,
    spawner: str = DEFAULT_SPAWNER,
) -> IProcessTransport:
    """
    Start a command as ``reactor.spawnProcess`` would, through the backend
    named ``spawner``: it leads a process group of its own, stdin
    ``/dev/null``, stdout and stderr one pipe.  Raises ``SpawnError`` if it
    cannot start (with the exit code a shell would give).
    """
    return SPAWNERS[spawner](reactor, protocol, executable, args, env, path)
