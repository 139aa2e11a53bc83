"""
Running one job: its commands in sequence, each leading a process group of
its own, output captured, stopping at the first failure;
and ending it, on demand, on timeout or at shutdown, with SIGTERM to every
process of it, then SIGKILL to whatever is left after a grace period.

``JobRunner`` owns that policy and every timer of it (each named, one method
cancels them all); starting processes and finding a job's processes is
``ProcessTracker``'s work (procs.py), so the policy can be driven with a
Clock and a stand-in tracker.  What the guarantees are is stated in
docs/processes.rst.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..core.job import Job
from .procs import Command, JobTree, ProcessTracker, tracker_for
from .result import RunResult, Stopped
from .spawn import SpawnError

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

#: ``(job, index, data)``: command ``index`` wrote ``data``; ``data`` empty when
#: command ``index`` (not the first) starts, so its predecessor ended.
OutputCallback = Callable[[Job, int, bytes], None]


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


def stop_orphans(reactor: Any, grace: float) -> Deferred[None]:
    """At shutdown: end orphaned processes no job claimed (only a subreaper has them)."""
    return tracker_for(reactor).stop_strays(grace)


class JobRunner:
    """
    Runs the commands of one job.  ``done`` fires with a ``RunResult``
    (why it stopped the job, if it did; the last signal; whether SIGKILL
    was needed) once every process of it is gone; the runner records exit
    codes and output on the job, and leaves its state and outcome to the
    dispatcher.

    The job ends when its last command has exited (or one failed, or it was
    killed or timed out); processes it left running then are stopped the
    same way a killed job's are.
    """

    def __init__(
        self,
        reactor: Any,
        job: Job,
        *,
        environ: Mapping[str, str],
        kill_grace: float,
        on_output: OutputCallback | None = None,
        processes: ProcessTracker | None = None,
    ) -> None:
        self.reactor = reactor
        self.job = job
        self.kill_grace = kill_grace
        self.on_output = on_output
        self.processes = processes if processes is not None else tracker_for(reactor)
        self.env = {**environ, **job.spec.env}
        self.done: Deferred[RunResult] = Deferred()
        self.tree: JobTree | None = None
        #: The command running now (its leader has not exited yet).
        self._command: Command | None = None
        #: Every command started, for their output pipes.
        self._commands: list[Command] = []
        self._spawning = False
        self._early_exit: list[int | None] = []
        self._stopping = False
        self._killing = False
        self._cleanup = False
        self._ending = False
        self._draining = False
        self._finished = False
        self._poll_delay = POLL_FIRST_SECONDS
        self._timers: dict[str, Any] = {}
        self._stopped: Stopped | None = None
        self._signal: str | None = None
        self._needed_kill = False

    @property
    def pid(self) -> int | None:
        """The pid (and process group id) of the command running now, if any."""
        return self._command.pid if self._command is not None else None

    # Timers: every one of them is named, and one method cancels them all.

    def _later(self, name: str, seconds: float, f: Callable[[], None]) -> None:
        self._cancel(name)

        def fire() -> None:
            del self._timers[name]
            f()

        self._timers[name] = self.reactor.callLater(seconds, fire)

    def _cancel(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _cancel_all(self) -> None:
        for name in list(self._timers):
            self._cancel(name)

    # Running.

    def start(self) -> Deferred[RunResult]:
        self.tree = self.processes.new_tree()
        timeout = self.job.timeout
        if timeout:
            self._later("timeout", timeout, self._timed_out)
        self._next_command()
        return self.done

    def _next_command(self) -> None:
        job = self.job
        index = len(job.logs)
        failed = bool(job.return_codes) and job.return_codes[-1] != 0
        if failed or index == len(job.spec.commands):
            self._end_of_job()
            return
        job.begin_command()
        if index and self.on_output is not None:
            # The previous command ended: its exit code and the command now
            # running are news for whoever follows the job.
            self.on_output(job, index, b"")
        assert self.tree is not None
        self._spawning = True
        try:
            command = self.processes.start_command(
                self.tree,
                job.spec.argvs[index],
                job.spec.cwd,
                self.env,
                lambda data: self._output(index, data),
                self._output_closed,
                self._exited,
            )
        except SpawnError as e:
            self._spawning = False
            self._not_started(index, e)
            return
        except Exception as e:
            # A bug, or something unforeseen: the job still ends as one that could not start.
            self._spawning = False
            log.failure("bug while starting a command of job {job_id}", job_id=job.id)
            self._not_started(index, SpawnError(f"internal error ({type(e).__name__}); the server log has the details"))
            return
        self._spawning = False
        self._command = command
        self._commands.append(command)
        if self._early_exit:
            self._exited(self._early_exit.pop())

    def _not_started(self, index: int, error: SpawnError) -> None:
        self._note(index, f"cannot run command: {error.reason}")
        self.job.end_command(error.exit_code)
        log.info("job {job_id}: {reason}", job_id=self.job.id, reason=error.reason)
        self._next_command()

    def _note(self, index: int, text: str) -> None:
        """A line of the server's own in a command's log."""
        self._output(index, f"sysadm-dispatch: {text}\n".encode())

    def _output(self, index: int, data: bytes) -> None:
        self.job.logs[index].write(data)
        if self.on_output is not None:
            self.on_output(self.job, index, data)

    def _exited(self, status: int | None) -> None:
        if self._spawning:
            # Reaped before start_command even returned.
            self._early_exit.append(status)
            return
        if self._finished or self._command is None:
            return
        self._command = None
        code, name = exit_code(status)
        if status is None:
            self._note(len(self.job.logs) - 1, "the command's exit status was lost (reaped elsewhere)")
        # The signal that ended the job is the one that ended its last command.
        self._signal = name
        self.job.end_command(code)
        if self._stopping:
            self._check_stopped()
        else:
            self._next_command()

    def _end_of_job(self) -> None:
        """The job's commands are over: stop whatever they left running, then finish."""
        assert self.tree is not None
        if self.processes.quick_empty(self.tree):
            self._finish_outputs()
            return
        self._cleanup = True
        self._begin_stop()

    # Stopping.

    def kill(self, *, timed_out: bool = False) -> None:
        """
        End the job: every process of it gets SIGTERM now, and SIGKILL if
        anything of it is still alive after the grace period.
        """
        if self._finished:
            return
        if self._stopped is None:
            self._stopped = "timed_out" if timed_out else "killed"
        if self._ending:
            # Nothing of it is running: only its output was still awaited.
            self._finish()
            return
        if self._stopping:
            return
        self._begin_stop()

    def _timed_out(self) -> None:
        log.info("job {job_id}: timed out after {seconds}s", job_id=self.job.id, seconds=self.job.timeout)
        self.kill(timed_out=True)

    def _begin_stop(self) -> None:
        assert self.tree is not None
        self._stopping = True
        self._cancel("timeout")
        self._later("escalate", self.kill_grace, self._escalate)
        self.processes.sweep(self.tree, signal.SIGTERM).addCallback(self._first_sweep)

    def _first_sweep(self, alive: int) -> None:
        if self._cleanup and alive and self.job.logs:
            s = "" if alive == 1 else "es"
            self._note(len(self.job.logs) - 1, f"stopping {alive} process{s} the job left running")
            log.info("job {job_id}: stopping {count} processes it left running", job_id=self.job.id, count=alive)
        self._check_stopped()

    def _check_stopped(self) -> None:
        """Once the running command has exited, look whether anything of the job is left."""
        if self._finished or self._ending or self._command is not None:
            return
        assert self.tree is not None
        if self.processes.subreaper and self.processes.quick_empty(self.tree):
            # As good as a pass over /proc for a subreaper, and much cheaper.
            self._finish_outputs()
            return
        sig = signal.SIGKILL if self._killing else None
        self.processes.sweep(self.tree, sig).addCallback(self._swept)

    def _swept(self, alive: int) -> None:
        if self._finished or self._ending or self._command is not None:
            return
        if not alive:
            self._finish_outputs()
            return
        self._later("poll", self._poll_delay, self._check_stopped)
        self._poll_delay = min(self._poll_delay * 2, POLL_MAX_SECONDS)

    def _escalate(self) -> None:
        if self._finished or self._ending:
            return
        assert self.tree is not None
        self._killing = True
        self._poll_delay = POLL_FIRST_SECONDS
        if self._command is not None:
            self._escalated()
        self.processes.sweep(self.tree, signal.SIGKILL).addCallback(self._killed)
        self._later("give_up", AFTER_KILL_SECONDS, self._give_up)

    def _escalated(self) -> None:
        if not self._needed_kill:
            self._needed_kill = True
            log.info("job {job_id}: still alive {grace}s after SIGTERM, sending SIGKILL", job_id=self.job.id,
                     grace=self.kill_grace)

    def _killed(self, alive: int) -> None:
        if alive:
            self._escalated()
        self._check_stopped()

    def _give_up(self) -> None:
        if self._finished or self._ending:
            return
        index = len(self.job.logs) - 1
        if self._command is not None:
            stuck = f"command {self._command.pid} and maybe others"
        else:
            stuck = "some processes of the job"
        log.warn("job {job_id}: {stuck} still present {seconds}s after SIGKILL; reporting it finished",
                 job_id=self.job.id, stuck=stuck, seconds=AFTER_KILL_SECONDS)
        if index >= 0:
            self._note(index, f"{stuck} survived SIGKILL for {AFTER_KILL_SECONDS:g}s (uninterruptible?)")
        # A command that never exited gets no exit code; its watcher stays to
        # reap it whenever it does exit.
        self._command = None
        self._finish_outputs(wait=False)

    # Finishing.

    def _finish_outputs(self, wait: bool = True) -> None:
        """Nothing of the job is left: take the rest of its output, then finish."""
        self._ending = True
        self._cancel_all()
        self._draining = True
        try:
            open_ = [command for command in self._commands if command.output_open and not command.drain()]
        finally:
            self._draining = False
        if not open_ or not wait:
            self._finish()
            return
        log.info("job {job_id}: its output is still held open by a process outside the job; waiting {seconds}s",
                 job_id=self.job.id, seconds=LINGER_SECONDS)
        self._later("linger", LINGER_SECONDS, self._finish)

    def _output_closed(self) -> None:
        if not self._ending or self._draining or self._finished:
            return
        if not any(command.output_open for command in self._commands):
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._ending = True
        self._cancel_all()
        for command in self._commands:
            if command.output_open:
                command.abandon()
        # The commands call back into this runner: without them, the job
        # (and its logs, up to the cap per command) is freed as soon as it is
        # dropped, not when the cycle collector next runs.
        self._commands = []
        if self.tree is not None:
            self.processes.forget(self.tree)
        self.done.callback(RunResult(self._stopped, self._signal, self._needed_kill))
