"""
Running one job: its commands in sequence, each driven by a
``CommandProtocol`` and leading a process group of its own, output captured,
stopping at the first failure; and ending it, on demand, on timeout or at
shutdown, procmon style: ``transport.signalProcess("TERM")``, then
``"KILL"`` if anything of the job is still alive after a grace period.  What
reaches past a command's process group is the tracker's to find, behind
``signalProcess`` (tracked.py).

``JobRunner`` owns that policy, in one explicit state (``RunState``), and
every timer of it (each named, one method cancels them all); it talks to a
command only through its transport, so the policy can be driven with a
Clock and a stand-in tracker.  What the guarantees are is stated in
docs/processes.rst.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .procs import ProcessTracker
from .proctable import JobTree
from .protocol import CommandProtocol, RunnableJob, exit_code, exit_status
from .result import RunResult, Stopped
from .spawn import SpawnError, plan
from .timers import NamedTimers

log = Logger()

#: How long to keep reading a finished job's output while something that is
#: not one of its processes as far as can be seen still holds the pipe.
LINGER_SECONDS = 2.0
#: First and longest wait between looks at whether a stopped job's
#: processes are gone (the wait doubles in between).
POLL_FIRST_SECONDS = 0.002
POLL_MAX_SECONDS = 0.25
#: How long to keep looking after SIGKILL before reporting the job finished
#: with stragglers (a process in uninterruptible sleep cannot die sooner).
AFTER_KILL_SECONDS = 2.0

J = TypeVar("J", bound=RunnableJob)

__all__ = ["AFTER_KILL_SECONDS", "LINGER_SECONDS", "POLL_FIRST_SECONDS", "POLL_MAX_SECONDS", "JobRunner",
           "RunState", "exit_code"]


def start_command(processes: ProcessTracker, tree: JobTree, command: CommandProtocol, argv: Sequence[str],
                  cwd: str | None, env: Mapping[str, str], job_id: str) -> None:
    """Start one command of a job; raises ``SpawnError`` if it cannot start, for whatever reason."""
    try:
        executable, args = plan(argv, cwd, env)
        processes.spawn(tree, command, executable, args, env, cwd)
    except SpawnError:
        raise
    except Exception as e:
        # A bug, or something unforeseen: the job still ends as one that could not start.
        log.failure("bug while starting a command of job {job_id}", job_id=job_id)
        raise SpawnError(f"internal error ({type(e).__name__}); the server log has the details") from None


class JobOutput(Generic[J]):
    """A job's output, and the server's own lines, into its logs; and news of it for ``on_output``."""

    def __init__(self, job: J, on_output: Callable[[J, int, bytes], None] | None) -> None:
        self.job = job
        self.on_output = on_output

    def write(self, index: int, data: bytes) -> None:
        self.job.logs[index].write(data)
        if self.on_output is not None:
            self.on_output(self.job, index, data)

    def note(self, index: int, text: str) -> None:
        """A line of the server's own in a command's log."""
        self.write(index, f"sysadm-dispatch: {text}\n".encode())

    def begun(self, index: int) -> None:
        if index and self.on_output is not None:
            # The previous command ended: its exit code and the command now
            # running are news for whoever follows the job.
            self.on_output(self.job, index, b"")


class RunState(Enum):
    #: A command is being started.
    STARTING = "starting"
    #: A command runs (or the next is about to start).
    RUNNING = "running"
    #: SIGTERM went to the job's processes; the grace runs.
    STOPPING = "stopping"
    #: The grace is over: SIGKILL to whatever is left.
    KILLING = "killing"
    #: Nothing of the job is left: the last of its output is awaited.
    DRAINING = "draining"
    #: ``done`` has fired.
    FINISHED = "finished"


class JobRunner(Generic[J]):
    """
    Runs the commands of one job.  ``done`` fires with a ``RunResult`` once
    every process of it is gone; the runner records exit codes and output on
    the job, and leaves how the job ended to the core.

    The job ends when its last command has exited (or one failed, or it was
    killed or timed out); processes it left running then are stopped the
    same way a killed job's are.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        job: J,
        *,
        environ: Mapping[str, str],
        kill_grace: float,
        processes: ProcessTracker,
        on_output: Callable[[J, int, bytes], None] | None = None,
        on_timeout: Callable[[J], None] | None = None,
    ) -> None:
        self.processes = processes
        #: Told as soon as the job's timeout runs out (before its processes are gone).
        self.on_timeout = on_timeout
        self.reactor = reactor
        self.job = job
        self.kill_grace = kill_grace
        self.output = JobOutput(job, on_output)
        self.env = {**environ, **job.spec.env}
        self.done: Deferred[RunResult] = Deferred()
        self.state = RunState.RUNNING
        self.tree = processes.new_tree()
        #: The command running now (its leader has not exited yet), and the
        #: last one started: its transport signals the job's processes.
        self._current: CommandProtocol | None = None
        self._last: CommandProtocol | None = None
        self._commands: list[CommandProtocol] = []
        self._early_exit: Failure | None = None
        #: Why the job was stopped early, if it was (the first reason wins).
        self.stopped: Stopped | None = None
        self._signal: str | None = None
        self._escalated = False
        self._poll_delay = POLL_FIRST_SECONDS
        #: Every timer of the policy: timeout, escalate, poll, give_up, linger.
        self._timers = NamedTimers(reactor)

    @property
    def pid(self) -> int | None:
        """The pid (and process group id) of the command running now, if any."""
        return self._current.pid if self._current is not None else None

    # Running.

    def start(self) -> Deferred[RunResult]:
        if self.job.timeout:
            self._timers.later("timeout", self.job.timeout, self._timed_out)
        self._next_command()
        return self.done

    def _next_command(self) -> None:
        job = self.job
        index = len(job.logs)
        failed = bool(job.return_codes) and job.return_codes[-1] != 0
        if failed or index == len(job.spec.argvs):
            self._end_of_job()
            return
        job.begin_command()
        self.output.begun(index)
        command = CommandProtocol(self, index)
        self.state = RunState.STARTING
        try:
            start_command(self.processes, self.tree, command, job.spec.argvs[index], job.spec.cwd, self.env, job.id)
        except SpawnError as e:
            self.state = RunState.RUNNING
            self._not_started(index, e)
            return
        self.state = RunState.RUNNING
        self._current = self._last = command
        self._commands.append(command)
        early, self._early_exit = self._early_exit, None
        if early is not None:
            self.command_exited(command, early)

    def _not_started(self, index: int, error: SpawnError) -> None:
        self.output.note(index, f"cannot run command: {error.reason}")
        self.job.end_command(error.exit_code)
        log.info("job {job_id}: {reason}", job_id=self.job.id, reason=error.reason)
        self._next_command()

    # What the commands' protocols tell.

    def command_output(self, command: CommandProtocol, data: bytes) -> None:
        self.output.write(command.index, data)

    def command_exited(self, command: CommandProtocol, reason: Failure) -> None:
        if self.state is RunState.STARTING:
            # Reaped before the spawn even returned.
            self._early_exit = reason
            return
        if self.state is RunState.FINISHED or command is not self._current:
            return
        self._current = None
        status = exit_status(reason)
        code, name = exit_code(status)
        if status is None:
            self.output.note(command.index, "the command's exit status was lost (reaped elsewhere)")
        # The signal that ended the job is the one that ended its last command.
        self._signal = name
        self.job.end_command(code)
        if self.state in (RunState.STOPPING, RunState.KILLING):
            self._check_stopped()
        else:
            self._next_command()

    def command_ended(self, command: CommandProtocol) -> None:
        if self.state is RunState.DRAINING and all(c.finished for c in self._commands):
            self._finish()

    def _end_of_job(self) -> None:
        """The job's commands are over: stop whatever they left running, then finish."""
        if self.processes.quick_empty(self.tree):
            self._drain()
            return
        self._begin_stop()

    # Stopping.

    def kill(self, *, timed_out: bool = False) -> None:
        """
        End the job: every process of it gets SIGTERM now, and SIGKILL if
        anything of it is still alive after the grace period.
        """
        if self.state is RunState.FINISHED:
            return
        if self.stopped is None:
            self.stopped = "timed_out" if timed_out else "killed"
        if self.state is RunState.DRAINING:
            # Nothing of it is running: only its output was still awaited.
            self._finish()
        elif self.state not in (RunState.STOPPING, RunState.KILLING):
            self._begin_stop()

    def _timed_out(self) -> None:
        log.info("job {job_id}: timed out after {seconds}s", job_id=self.job.id, seconds=self.job.timeout)
        if self.on_timeout is not None and self.stopped is None:
            self.on_timeout(self.job)
        self.kill(timed_out=True)

    def _signal_all(self, name: str | None) -> Deferred[int]:
        """
        Signal the job's processes (``name`` None: only look) through the
        last command's transport; fires with how many were alive, as the
        same look found them.
        """
        if name is not None and self._last is not None and self._last.transport is not None:
            self._last.transport.signalProcess(name)
        return self.processes.sweep(self.tree)

    def _begin_stop(self) -> None:
        cleanup = self.stopped is None
        self.state = RunState.STOPPING
        self._timers.cancel("timeout")
        self._timers.later("escalate", self.kill_grace, self._escalate)
        self._signal_all("TERM").addCallback(self._first_sweep, cleanup)

    def _first_sweep(self, alive: int, cleanup: bool) -> None:
        if cleanup and alive and self.job.logs:
            s = "" if alive == 1 else "es"
            self.output.note(len(self.job.logs) - 1, f"stopping {alive} process{s} the job left running")
            log.info("job {job_id}: stopping {count} processes it left running", job_id=self.job.id, count=alive)
        self._check_stopped()

    def _check_stopped(self) -> None:
        """Once the running command has exited, look whether anything of the job is left."""
        if self.state not in (RunState.STOPPING, RunState.KILLING) or self._current is not None:
            return
        if self.processes.subreaper and self.processes.quick_empty(self.tree):
            # As good as a pass over /proc for a subreaper, and much cheaper.
            self._drain()
            return
        self._signal_all("KILL" if self.state is RunState.KILLING else None).addCallback(self._swept)

    def _swept(self, alive: int) -> None:
        if self.state not in (RunState.STOPPING, RunState.KILLING) or self._current is not None:
            return
        if not alive:
            self._drain()
            return
        self._timers.later("poll", self._poll_delay, self._check_stopped)
        self._poll_delay = min(self._poll_delay * 2, POLL_MAX_SECONDS)

    def _escalate(self) -> None:
        if self.state is not RunState.STOPPING:
            return
        self.state = RunState.KILLING
        self._poll_delay = POLL_FIRST_SECONDS
        if self._current is not None:
            self._escalation()
        self._signal_all("KILL").addCallback(self._killed)
        self._timers.later("give_up", AFTER_KILL_SECONDS, self._give_up)

    def _escalation(self) -> None:
        if not self._escalated:
            self._escalated = True
            log.info("job {job_id}: still alive {grace}s after SIGTERM, sending SIGKILL", job_id=self.job.id,
                     grace=self.kill_grace)

    def _killed(self, alive: int) -> None:
        if alive:
            self._escalation()
        self._check_stopped()

    def _give_up(self) -> None:
        if self.state is not RunState.KILLING:
            return
        index = len(self.job.logs) - 1
        if self._current is not None:
            stuck = f"command {self._current.pid} and maybe others"
        else:
            stuck = "some processes of the job"
        log.warn("job {job_id}: {stuck} still present {seconds}s after SIGKILL; reporting it finished",
                 job_id=self.job.id, stuck=stuck, seconds=AFTER_KILL_SECONDS)
        if index >= 0:
            self.output.note(index, f"{stuck} survived SIGKILL for {AFTER_KILL_SECONDS:g}s (uninterruptible?)")
        # A command that never exited gets no exit code; its transport stays
        # to reap it whenever it does exit.
        self._current = None
        self._drain(wait=False)

    # Finishing.

    def _drain(self, wait: bool = True) -> None:
        """Nothing of the job is left: take the rest of its output, then finish."""
        self.state = RunState.DRAINING
        self._timers.cancel_all()
        # Both backends read a command's output to its end before telling it
        # exited when nothing else holds the pipe: the job then finishes at
        # once, with no linger timer set.
        if not wait or all(command.finished for command in self._commands):
            self._finish()
            return
        self._timers.later("linger", LINGER_SECONDS, self._lingered)

    def _lingered(self) -> None:
        log.info("job {job_id}: its output was held open {seconds}s by a process outside the job; not read further",
                 job_id=self.job.id, seconds=LINGER_SECONDS)
        self._finish()

    def _finish(self) -> None:
        if self.state is RunState.FINISHED:
            return
        self.state = RunState.FINISHED
        self._timers.cancel_all()
        for command in self._commands:
            # The commands call back into this runner: without them, the job
            # (and its logs, up to the cap per command) is freed as soon as
            # it is dropped, not when the cycle collector next runs.
            command.detach()
            if not command.ended and command.transport is not None:
                command.transport.loseConnection()
        self._commands = []
        self._current = self._last = None
        self.processes.forget(self.tree)
        self.done.callback(RunResult(self.stopped, self._signal, self._escalated))

