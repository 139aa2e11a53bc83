"""
One command, as Twisted's process API sees it: ``CommandProtocol`` is the
``ProcessProtocol`` of each command a job runs, forwarding what happens to it
to the policy that runs the job (``runner.JobRunner``); and what that policy
needs of a job, as a ``typing.Protocol`` (``RunnableJob``), so that the
process room does not depend on the core's ``Job``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from typing import Protocol

from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure


class CommandLog(Protocol):
    def write(self, data: bytes) -> object: ...


class CommandSpec(Protocol):
    @property
    def argvs(self) -> Sequence[Sequence[str]]: ...

    @property
    def cwd(self) -> str | None: ...

    @property
    def env(self) -> Mapping[str, str]: ...


class RunnableJob(Protocol):
    """What running a job takes from it (the core's ``Job`` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def spec(self) -> CommandSpec: ...

    @property
    def timeout(self) -> float | None:
        """Seconds the whole job may run; None or 0: no limit."""

    @property
    def logs(self) -> Sequence[CommandLog]:
        """One log per command begun."""

    @property
    def return_codes(self) -> Sequence[int]:
        """The exit code of each command ended."""

    def begin_command(self) -> object: ...

    def end_command(self, exit_code: int) -> None: ...


class CommandPolicy(Protocol):
    """What a ``CommandProtocol`` tells: the runner of its job."""

    def command_output(self, command: CommandProtocol, data: bytes) -> None: ...

    def command_exited(self, command: CommandProtocol, reason: Failure) -> None: ...

    def command_ended(self, command: CommandProtocol) -> None: ...


def exit_code(status: int | None) -> tuple[int, str | None]:
    """A ``waitpid`` status as a shell reports it: ``(code, signal name)``; 128+N for death by signal N."""
    if status is None:
        return 255, None
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"SIG{signum}"
        return 128 + signum, name
    return os.waitstatus_to_exitcode(status), None


def exit_status(reason: Failure) -> int | None:
    """The ``waitpid`` status a ``ProcessDone``/``ProcessTerminated`` carries (None: lost)."""
    status = getattr(reason.value, "status", None)
    return status if isinstance(status, int) else None


class CommandProtocol(ProcessProtocol):
    """
    The ``ProcessProtocol`` of one command of a job: output, exit and end go
    to the policy, which acts on the command through ``self.transport``
    only.  ``exited`` is set once the command was reaped, ``ended`` once its
    output is closed too (``processEnded``); ``output_closed`` once its
    output is (``childConnectionLost``), which may come first.
    """

    transport: IProcessTransport | None

    def __init__(self, policy: CommandPolicy, index: int) -> None:
        self.policy: CommandPolicy | None = policy
        #: Which command of the job this is.
        self.index = index
        self.exited = False
        self.ended = False
        self.output_closed = False

    @property
    def pid(self) -> int | None:
        if self.transport is None:
            return None
        pid: int | None = self.transport.pid
        return pid

    @property
    def finished(self) -> bool:
        """Reaped, and its output read to the end: nothing more of it will come but the news of that."""
        return self.ended or (self.exited and self.output_closed)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if self.policy is not None:
            self.policy.command_output(self, data)

    def childConnectionLost(self, childFD: int) -> None:
        self.output_closed = True

    def processExited(self, reason: Failure) -> None:
        self.exited = True
        if self.policy is not None:
            self.policy.command_exited(self, reason)

    def processEnded(self, reason: Failure) -> None:
        if not self.exited:
            self.processExited(reason)
        self.ended = True
        if self.policy is not None:
            self.policy.command_ended(self)

    def detach(self) -> None:
        """The job is over: tell nothing more (the transport may outlive it, to reap a straggler)."""
        self.policy = None
