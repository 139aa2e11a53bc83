"""
The stand-ins every test shares, for the process room's two seams:

* ``FakeRunner`` stands in for ``JobRunner`` behind the ``Dispatcher``
  (``runner_factory=FakeRunner``): the test feeds output, ends commands and
  the run, and ``kill`` ends it at once (as a job that obeys SIGTERM).
* ``FakeTracker`` stands in for ``ProcessTracker`` behind a ``JobRunner``:
  each command started gets a ``FakeProcess`` transport (procmon's
  ``DummyProcess`` style) whose ``signalProcess`` asks for a sweep, the way
  ``TreeTransport`` does; the test answers each sweep with how many
  processes were alive and drives the commands' exits and output.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from sysadm_dispatch.process.backends import exit_reason, signal_number
from sysadm_dispatch.process.proctable import JobTree
from sysadm_dispatch.process.result import RunResult
from sysadm_dispatch.process.spawn import SpawnError


class FakeRunner:
    """Runs nothing: the job stays running until the test ends it, or it is killed."""

    made: ClassVar[list[FakeRunner]] = []

    def __init__(self, reactor: Any, job: Any, *, on_output: Any = None, **_: Any) -> None:
        self.job = job
        self.on_output = on_output
        self.done: Deferred[RunResult] = Deferred()
        self.stopped: str | None = None
        FakeRunner.made.append(self)

    def start(self) -> Deferred[RunResult]:
        self.job.begin_command()
        return self.done

    def output(self, data: bytes) -> None:
        self.job.logs[-1].write(data)
        self.on_output(self.job, len(self.job.logs) - 1, data)

    def end(self, code: int, result: RunResult = RunResult()) -> None:
        self.job.end_command(code)
        self.done.callback(result)

    def kill(self, *, timed_out: bool = False) -> None:
        if not self.done.called:
            self.stopped = "timed_out" if timed_out else "killed"
            self.end(143, RunResult(self.stopped, "SIGTERM"))  # type: ignore[arg-type]


class FakeProcess:
    """A command's transport: ``pid``, ``signalProcess``, ``loseConnection``; the test makes it exit or close."""

    def __init__(self, tracker: FakeTracker, tree: JobTree, protocol: ProcessProtocol, pid: int) -> None:
        self.tracker = tracker
        self.tree = tree
        self.proto = protocol
        self.pid: int | None = pid
        self.signals: list[str | int] = []
        #: Something outside the job holds its output pipe: it does not close when the command exits.
        self.held = False
        self.output_open = True
        self.has_exited = False
        protocol.makeConnection(self)  # type: ignore[arg-type]

    def signalProcess(self, signalID: str | int) -> None:
        self.signals.append(signalID)
        self.tracker.sweep(self.tree, signal_number(signalID))

    def output(self, data: bytes) -> None:
        self.proto.childDataReceived(1, data)

    def exit(self, status: int | None) -> None:
        """The command exits with this ``waitpid`` status (None: lost); its output closes unless held."""
        self.has_exited = True
        self.pid = None
        self.proto.processExited(Failure(exit_reason(status)))
        if not self.held:
            self.close()

    def close(self) -> None:
        """Its output pipe closes: the command has ended, if it has exited."""
        if self.output_open:
            self.output_open = False
            if self.has_exited:
                self.proto.processEnded(Failure(exit_reason(0)))

    def loseConnection(self) -> None:
        self.output_open = False


class FakeTracker:
    """Records what the runner asks of the tracker; the test answers."""

    subreaper = False

    def __init__(self, reactor: Clock | None = None) -> None:
        self.reactor = reactor if reactor is not None else Clock()
        self.commands: list[FakeProcess] = []
        #: Open sweeps, oldest first: requests made before the test answers
        #: share one, as the requests of one reactor turn share one look.
        self.sweeps: list[tuple[int | None, list[Deferred[int]]]] = []
        self.empty = True
        self.forgotten = False
        self.fail_with: SpawnError | None = None
        self._turn = 0
        self._turns: list[int] = []

    def new_tree(self) -> JobTree:
        return JobTree("token")

    def spawn(self, tree: JobTree, protocol: ProcessProtocol, executable: str, args: Sequence[str],
              env: Mapping[str, str], path: str | None = None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.commands.append(FakeProcess(self, tree, protocol, 1000 + len(self.commands)))

    def forget(self, tree: JobTree) -> None:
        self.forgotten = True

    def quick_empty(self, tree: JobTree) -> bool:
        return self.empty

    def sweep(self, tree: JobTree, sig: int | None = None) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        if self.sweeps and self._turns[-1] == self._turn:
            old, waiters = self.sweeps[-1]
            waiters.append(d)
            if sig is not None and (old is None or sig == signal.SIGKILL):
                self.sweeps[-1] = (sig, waiters)
        else:
            self.sweeps.append((sig, [d]))
            self._turns.append(self._turn)
        return d

    def answer(self, alive: int) -> int | None:
        """Answer the oldest open sweep; returns the signal it carried."""
        self._turn += 1  # what its answer asks for is looked at in a later pass
        sig, waiters = self.sweeps.pop(0)
        self._turns.pop(0)
        for d in waiters:
            d.callback(alive)
        return sig

    def answer_all(self, alive: int) -> list[int | None]:
        return [self.answer(alive) for _ in range(len(self.sweeps))]
