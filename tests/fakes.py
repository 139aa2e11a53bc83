"""
Stand-ins shared by the tests, one section per part of the server they
stand in for.  Fakes never replace the real layer: tests with real processes,
sockets and stores prove the product; these drive one part alone.

* ``FakeRunner`` stands in for ``JobRunner`` behind the ``Dispatcher``
  (``runner_factory=FakeRunner``): the test feeds output, ends commands and
  the run, and ``kill`` ends it at once (as a job that obeys SIGTERM).
* ``FakeStore`` stands in for the store behind the dispatcher's journal.
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

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from sysadm_dispatch.process.backends import exit_reason, signal_number
from sysadm_dispatch.process.proctable import JobTree
from sysadm_dispatch.process.result import RunResult
from sysadm_dispatch.process.spawn import SpawnError
from sysadm_dispatch.store.records import Opened, StoreError

# ---------------------------------------------------------------------------
# The dispatcher's side (core): a job runner and a store, both in memory.
# ---------------------------------------------------------------------------


class FakeRunner:
    """
    Runs nothing: the job stays running until the test ends it, or it is
    killed.  ``made`` lists every runner made, in order (clear it at the
    start of a test).
    """

    made: ClassVar[list[FakeRunner]] = []

    def __init__(self, reactor: Any, job: Any, *, on_output: Any = None, **_: Any) -> None:
        self.job = job
        self.on_output = on_output
        self.done: Deferred[RunResult] = Deferred()
        self.stopped: str | None = None
        self.kills = 0
        FakeRunner.made.append(self)

    def start(self) -> Deferred[RunResult]:
        self.job.begin_command()
        return self.done

    def output(self, data: bytes) -> None:
        self.job.logs[-1].write(data)
        self.on_output(self.job, len(self.job.logs) - 1, data)

    def end(self, code: int, result: RunResult = RunResult()) -> None:
        """The command exits with ``code``, and the run is over with ``result``."""
        self.job.end_command(code)
        self.done.callback(result)

    def kill(self, *, timed_out: bool = False) -> None:
        self.kills += 1
        if not self.done.called:
            self.stopped = "timed_out" if timed_out else "killed"
            self.end(143, RunResult(self.stopped, "SIGTERM"))  # type: ignore[arg-type]


class FakeStore:
    """
    Stands in for ``store.database.Store``: keeps what it is told in lists;
    each write answers at once, or (``hold = True``) when the test calls
    ``settle()``; ``broken`` makes every write fail with ``StoreError``.
    """

    path = ":memory:"

    def __init__(self, opened: Opened | None = None) -> None:
        self.opened = opened if opened is not None else Opened([], None)
        self.added: list[tuple[Any, float, float | None]] = []
        self.started: list[str] = []
        self.pending_again: list[str] = []
        self.finished: list[dict[str, Any]] = []
        self.history_asked: list[tuple[float, float, int]] = []
        self.closed = False
        self.broken = False
        self.hold = False
        self._held: list[Deferred[None]] = []

    def _write(self) -> Deferred[None]:
        if self.closed:
            return fail(StoreError("the job store is closed"))
        if self.broken:
            return fail(StoreError("disk is full"))
        if self.hold:
            d: Deferred[None] = Deferred()
            self._held.append(d)
            return d
        return succeed(None)

    def settle(self) -> None:
        held, self._held = self._held, []
        for d in held:
            d.callback(None)

    def open(self) -> Deferred[Opened]:
        return succeed(self.opened)

    def add(self, rows: Any) -> Deferred[None]:
        d = self._write()
        self.added.extend(rows)
        return d

    def mark_started(self, job_id: str, now: float) -> Deferred[None]:
        d = self._write()
        self.started.append(job_id)
        return d

    def mark_pending(self, job_id: str) -> Deferred[None]:
        d = self._write()
        self.pending_again.append(job_id)
        return d

    def finish(self, record: dict[str, Any], time_finished: float) -> Deferred[None]:
        d = self._write()
        self.finished.append(record)
        return d

    def history(self, start: float, end: float, limit: int) -> Deferred[Any]:
        self.history_asked.append((start, end, limit))
        return fail(StoreError("disk is full")) if self.broken else succeed(([], False))

    def latest(self, job_id: str) -> Deferred[dict[str, Any] | None]:
        return succeed(next((r for r in reversed(self.finished) if r["process_id"] == job_id), None))

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


# ---------------------------------------------------------------------------
# The runner's side (process): a tracker and the commands' transports.
# ---------------------------------------------------------------------------


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
