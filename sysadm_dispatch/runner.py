"""
Running one job: its commands in sequence, each in a process group of its
own, output captured, stopping at the first failure; and ending it on demand
or on timeout with SIGTERM, then SIGKILL after a grace period.

The ``ProcessProtocol`` here is thin: it forwards to ``JobRunner``, which owns
the policy and every timer.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import abstract, error
from twisted.internet.defer import Deferred
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .job import EXIT_NOT_STARTED, Job

log = Logger()

#: util-linux ``setsid`` gives each command a session and process group of
#: its own while keeping its pid, so the whole group can be signalled.
#: (Twisted spawns with posix_spawnp where it can, so a ``setpgid`` in a
#: pre-exec hook would never run.)
SETSID = shutil.which("setsid")
#: coreutils ``env -C DIR`` changes directory in the child, so that Twisted
#: can keep using posix_spawnp (it falls back to fork when given ``path=``).
ENV = shutil.which("env") or "/usr/bin/env"

#: How long to wait for the output pipe to close after a command exited
#: normally (a background process it left may still hold it open).
LINGER_SECONDS = 2.0
#: How often to look whether a killed job's process group is empty.
GROUP_POLL_SECONDS = 0.05
#: How long to keep looking after SIGKILL before giving up on stragglers.
AFTER_KILL_SECONDS = 2.0
READ_SIZE = 256 * 1024

OutputCallback = Callable[[Job, int, bytes], None]


def resolve_program(word: str, path: str | None) -> str | None:
    """
    Where the first word of a command is found: looked up on ``PATH`` unless
    it names a path itself (then it is used as given, relative to the job's
    working directory).
    """
    if "/" in word:
        return word
    return shutil.which(word, path=path)


class _OutputPipe(abstract.FileDescriptor):
    """The read end of the one pipe a command's stdout and stderr share."""

    def __init__(self, reactor: Any, fd: int, runner: JobRunner) -> None:
        super().__init__(reactor)
        os.set_blocking(fd, False)
        self.fd = fd
        self.runner = runner
        self.startReading()

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> object:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError as e:
            return None if e.errno == errno.EINTR else CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        self.runner.output_received(data)
        return None

    def abandon(self) -> None:
        """Stop reading although the pipe is still open."""
        self.stopReading()
        self.connectionLost(Failure(CONNECTION_DONE))

    def connectionLost(self, reason: Failure) -> None:
        if self.fd < 0:
            return
        abstract.FileDescriptor.connectionLost(self, reason)
        os.close(self.fd)
        self.fd = -1
        self.runner.output_closed()


class _CommandProtocol(ProcessProtocol):
    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner

    def processEnded(self, reason: Failure) -> None:
        self.runner.process_ended(reason.value)


class JobRunner:
    """
    Runs the commands of one job.  ``done`` fires with the job once every
    process of it is gone; the runner records exit codes and how the job
    ended on the job itself, and leaves its state to the dispatcher.
    """

    def __init__(
        self,
        reactor: Any,
        job: Job,
        *,
        environ: Mapping[str, str],
        kill_grace: float,
        on_output: OutputCallback | None = None,
    ) -> None:
        self.reactor = reactor
        self.job = job
        self.kill_grace = kill_grace
        self.on_output = on_output
        self.env = {**environ, **job.spec.env}
        self.done: Deferred[Job] = Deferred()
        self._process: Any = None
        self._pipe: _OutputPipe | None = None
        self._exit: BaseException | None = None
        self._stopping = False
        self._timers: dict[str, Any] = {}
        self._finished = False

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

    def start(self) -> Deferred[Job]:
        timeout = self.job.spec.timeout
        if timeout:
            self._later("timeout", timeout, self._timed_out)
        self._next_command()
        return self.done

    def _next_command(self) -> None:
        job = self.job
        index = len(job.logs)
        failed = bool(job.return_codes) and job.return_codes[-1] != 0
        if self._stopping or failed or index == len(job.spec.commands):
            self._finish()
            return
        job.begin_command()
        argv = job.spec.argvs[index]
        cwd = job.spec.cwd
        program = resolve_program(argv[0], self.env.get("PATH", os.defpath))
        if program is None:
            self._not_started(f"program {argv[0]!r} not found on PATH", EXIT_NOT_STARTED)
            return
        if cwd is not None and not os.path.isdir(cwd):
            self._not_started(f"working directory {cwd!r} does not exist", EXIT_NOT_STARTED)
            return
        args = [program, *argv[1:]]
        if cwd is not None:
            args = [ENV, "-C", cwd, "--", *args]
        if SETSID is not None:
            args = [SETSID, "--", *args]
        try:
            read_fd, write_fd = os.pipe()
        except OSError as e:
            self._not_started(f"cannot create a pipe ({e.strerror})", EXIT_NOT_STARTED)
            return
        try:
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            os.close(read_fd)
            os.close(write_fd)
            self._not_started(f"cannot open {os.devnull} ({e.strerror})", EXIT_NOT_STARTED)
            return
        try:
            self._process = self.reactor.spawnProcess(
                _CommandProtocol(self),
                args[0],
                args,
                env=self.env,
                childFDs={0: devnull, 1: write_fd, 2: write_fd},
            )
        except OSError as e:
            os.close(read_fd)
            self._not_started(f"cannot start {argv[0]!r} ({e.strerror})", EXIT_NOT_STARTED)
            return
        finally:
            os.close(write_fd)
            os.close(devnull)
        self._exit = None
        self._pipe = _OutputPipe(self.reactor, read_fd, self)
        log.debug("job {job_id}: started {argv!r} as pid {pid}", job_id=job.id, argv=argv, pid=self._process.pid)

    def _not_started(self, reason: str, code: int) -> None:
        message = f"sysadm-dispatch: cannot run command: {reason}\n".encode()
        self.output_received(message)
        self.job.end_command(code)
        log.info("job {job_id}: {reason}", job_id=self.job.id, reason=reason)
        self._next_command()

    def output_received(self, data: bytes) -> None:
        index = len(self.job.logs) - 1
        self.job.logs[index].write(data)
        if self.on_output is not None:
            self.on_output(self.job, index, data)

    def output_closed(self) -> None:
        self._pipe = None
        self._cancel("linger")
        self._maybe_command_done()

    def process_ended(self, status: BaseException | None) -> None:
        self._exit = status or error.ProcessDone(0)
        if self._pipe is not None and not self._stopping:
            self._later("linger", LINGER_SECONDS, self._abandon_pipe)
        self._maybe_command_done()

    def _abandon_pipe(self) -> None:
        if self._pipe is not None:
            log.info("job {job_id}: output still open after the command exited; left to its background processes",
                     job_id=self.job.id)
            self._pipe.abandon()

    def _maybe_command_done(self) -> None:
        if self._exit is None or self._pipe is not None:
            return
        if self._stopping and self._group_alive():
            self._later("group", GROUP_POLL_SECONDS, self._maybe_command_done)
            return
        status, self._exit = self._exit, None
        self._process = None
        code = getattr(status, "exitCode", None)
        signum = getattr(status, "signal", None)
        if isinstance(status, error.ProcessDone):
            code = 0
        if signum:
            self.job.signal = signal.Signals(signum).name
            code = 128 + signum
        self.job.end_command(code if code is not None else 1)
        self._next_command()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._cancel_all()
        self.done.callback(self.job)

    # Stopping.

    def kill(self, *, timed_out: bool = False) -> None:
        """
        End the job: its process group gets SIGTERM now and SIGKILL if
        anything of it is still alive after the grace period.
        """
        if self._stopping or self._finished:
            return
        self._stopping = True
        if timed_out:
            self.job.timed_out = True
        else:
            self.job.killed = True
        self._cancel("timeout")
        self._cancel("linger")
        if self._process is None:
            # Between commands; nothing is running.
            self._finish()
            return
        self._signal_group(signal.SIGTERM)
        self._later("escalate", self.kill_grace, self._escalate)

    def _timed_out(self) -> None:
        log.info("job {job_id}: timed out after {seconds}s", job_id=self.job.id, seconds=self.job.spec.timeout)
        self.kill(timed_out=True)

    def _escalate(self) -> None:
        if self._process is None and self._exit is None:
            return
        self.job.escalated = True
        log.info("job {job_id}: still alive {grace}s after SIGTERM, sending SIGKILL",
                 job_id=self.job.id, grace=self.kill_grace)
        self._signal_group(signal.SIGKILL)
        self.job.signal = "SIGKILL"
        self._later("give_up", AFTER_KILL_SECONDS, self._give_up)

    def _give_up(self) -> None:
        log.warn("job {job_id}: processes still present {seconds}s after SIGKILL", job_id=self.job.id,
                 seconds=AFTER_KILL_SECONDS)
        if self._pipe is not None:
            self._pipe.abandon()
        self._stopping = False
        self._maybe_command_done()

    def _pgid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _group_alive(self) -> bool:
        pgid = self._pgid()
        if pgid is None or SETSID is None:
            return False
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _signal_group(self, sig: int) -> None:
        pid = self._pgid()
        if pid is None:
            return
        try:
            os.killpg(pid, sig)
            return
        except ProcessLookupError:
            pass
        # The group does not exist (yet, or any more): signal the process.
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
