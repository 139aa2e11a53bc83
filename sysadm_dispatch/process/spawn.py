"""
Starting one command cheaply, and noticing its output and its end.

Commands are started with ``os.posix_spawn``: no fork of the server, no scan
of its open file descriptors (every descriptor this process opens is
close-on-exec, so the child only needs stdin, stdout and stderr set up), and
each command leads a process group of its own (see ``spawn``), so that the
group can be signalled as a whole.  A command's stdout and stderr share
one pipe; stdin is ``/dev/null``.

Its end is noticed through a pidfd (Linux 5.3 and later) watched by the
reactor like any other descriptor, and reaped with ``waitpid`` on that pid
only, so nobody else's child is ever reaped here.  Without pidfds the
reactor's own SIGCHLD reaping is used, the way Twisted's ``spawnProcess``
does it.

A command that cannot be started raises ``SpawnError`` with the exit code a
shell would report: 127 when the program cannot be found or nothing could be
started, 126 when it was found but cannot be executed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import abstract
from twisted.internet import process as twisted_process
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

#: Exit code of a command that could not be found or started at all.
EXIT_NOT_FOUND = 127
#: Exit code of a command found but not executable.
EXIT_NOT_EXECUTABLE = 126

#: coreutils ``env -C DIR`` changes directory in the child: ``posix_spawn``
#: has no portable way to do it.
ENV = shutil.which("env") or "/usr/bin/env"

#: Bytes asked for per read of a command's output.
READ_SIZE = 1 << 20
#: Capacity asked for a command's output pipe once it has filled the kernel's
#: default 64 KiB (which caps every read at that and costs a wakeup per
#: 64 KiB of a flood); most commands never fill it, and never pay for more.
PIPE_SIZE = 1 << 20
#: A read this big means the pipe was full.
_DEFAULT_PIPE_SIZE = 1 << 16

#: Every signal a child may have a disposition for: all are reset to their
#: defaults in the child, whatever this process ignores or handles.
_SIGNALS = sorted(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
_STDIO = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]

#: How often, at most, the fallback (no pidfd) exit watcher looks by itself.
_FALLBACK_POLL_MAX = 1.0


class SpawnError(Exception):
    """A command could not be started: ``reason`` for its log, and the exit code recorded."""

    def __init__(self, reason: str, exit_code: int = EXIT_NOT_FOUND) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


def _not_executable(path: str) -> str | None:
    """Why ``path`` cannot be executed, or None if it looks like it can."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except NotADirectoryError:
        return "a component of the path is not a directory"
    except OSError as e:
        return e.strerror or str(e)
    if os.path.isdir(path):
        return "it is a directory"
    if not os.access(path, os.X_OK) or not st.st_mode & 0o111:
        return "permission denied (not executable)"
    return None


def plan(argv: Sequence[str], cwd: str | None, env: Mapping[str, str]) -> tuple[str, list[str], bool]:
    """
    What to execute for one command: ``(executable, argv, search_path)``.
    Raises ``SpawnError`` for a program that is missing or not executable, or
    a working directory that is gone.
    """
    word = argv[0]
    path_env = env.get("PATH", os.defpath)
    if cwd is not None:
        if not os.path.isdir(cwd):
            raise SpawnError(f"working directory {cwd!r} does not exist or is not a directory")
        if "/" in word:
            where = os.path.join(cwd, word)
            problem = _not_executable(where)
            if problem is not None:
                code = EXIT_NOT_FOUND if problem == "no such file" else EXIT_NOT_EXECUTABLE
                raise SpawnError(f"cannot execute {word!r} in {cwd!r}: {problem}", code)
            program = word
        else:
            found = shutil.which(word, path=path_env)
            if found is None:
                raise SpawnError(f"program {word!r} not found on PATH")
            program = found
        # env(1) changes directory, then executes the program in place.
        return ENV, [ENV, "-C", cwd, "--", program, *argv[1:]], False
    if "/" in word:
        return word, list(argv), False
    if path_env == os.environ.get("PATH", os.defpath):
        # The C library searches PATH itself (it reads this process's PATH,
        # which is the job's here): cheaper than searching from Python.
        return word, list(argv), True
    found = shutil.which(word, path=path_env)
    if found is None:
        raise SpawnError(f"program {word!r} not found on PATH")
    return found, [found, *argv[1:]], False


def open_output_pipe() -> tuple[int, int]:
    """
    The pipe a command's stdout and stderr share: ``(read_fd, write_fd)``,
    both close-on-exec, the write end above 2.  Raises ``SpawnError``.
    """
    try:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    except OSError as e:
        raise SpawnError(f"cannot create a pipe for its output ({e.strerror})") from None
    if write_fd <= 2:
        # Only when this process runs with stdio closed: keep the write end
        # away from the descriptors the child's stdio is set up on.
        try:
            moved = fcntl.fcntl(write_fd, fcntl.F_DUPFD_CLOEXEC, 3)
        except OSError as e:
            os.close(read_fd)
            os.close(write_fd)
            raise SpawnError(f"cannot create a pipe for its output ({e.strerror})") from None
        os.close(write_fd)
        write_fd = moved
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


_has_terminal: bool | None = None


def has_controlling_terminal() -> bool:
    """Whether this process has a controlling terminal (asked once)."""
    global _has_terminal
    if _has_terminal is None:
        try:
            os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC))
        except OSError:
            _has_terminal = False
        else:
            _has_terminal = True
    return _has_terminal


def spawn(executable: str, argv: list[str], env: Mapping[str, str], output_fd: int, search: bool) -> int:
    """
    Start a process leading a process group of its own, stdin ``/dev/null``,
    stdout and stderr ``output_fd``; returns its pid.  Raises ``SpawnError``.

    When this process has a controlling terminal (``twistd -n`` in a shell),
    the child also leads a session of its own, so that it cannot read from
    or be stopped by that terminal.  Otherwise (a service) a new process
    group is all it takes, and it is much cheaper: on Linux with scheduler
    autogroups every new session costs a scheduling group, which halves the
    spawn rate.
    """
    actions = [*_STDIO, (os.POSIX_SPAWN_DUP2, output_fd, 1), (os.POSIX_SPAWN_DUP2, output_fd, 2)]
    start = os.posix_spawnp if search else os.posix_spawn
    group: dict[str, Any] = {"setsid": True} if has_controlling_terminal() else {"setpgroup": 0}
    try:
        return start(executable, argv, env, file_actions=actions, setsigdef=_SIGNALS, setsigmask=(), **group)
    except OSError as e:
        raise _spawn_error(argv[0], e, search) from None


def _spawn_error(word: str, e: OSError, search: bool) -> SpawnError:
    reason = e.strerror or str(e)
    if e.errno == errno.ENOENT:
        if search:
            return SpawnError(f"program {word!r} not found on PATH")
        return SpawnError(f"cannot execute {word!r}: no such file")
    if e.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR, errno.ENOTDIR, errno.ELOOP,
                   errno.ETXTBSY, errno.ENAMETOOLONG):
        if e.errno == errno.ENOEXEC:
            reason = "not an executable program (exec format error)"
        elif e.errno == errno.EACCES:
            reason = "permission denied (not executable)"
        return SpawnError(f"cannot execute {word!r}: {reason}", EXIT_NOT_EXECUTABLE)
    if e.errno == errno.E2BIG:
        return SpawnError(f"cannot execute {word!r}: its arguments and environment are too long", EXIT_NOT_EXECUTABLE)
    return SpawnError(f"cannot start {word!r} ({reason})")


class OutputReader(abstract.FileDescriptor):
    """
    Reads the read end of a command's output pipe as data arrives, until
    every writer has closed it.  ``on_data(bytes)`` and ``on_closed()`` are
    called on the reactor thread.
    """

    def __init__(self, reactor: Any, fd: int, on_data: Callable[[bytes], None], on_closed: Callable[[], None]) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.on_data = on_data
        self.on_closed = on_closed
        self._grown = False
        self.startReading()

    @property
    def open(self) -> bool:
        return self.fd >= 0

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> object:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None
        except InterruptedError:
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        if len(data) >= _DEFAULT_PIPE_SIZE and not self._grown:
            self._grow()
        self.on_data(data)
        return None

    def _grow(self) -> None:
        """The command fills its pipe: give it room for ``PIPE_SIZE`` bytes between reads."""
        self._grown = True
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over the user's pipe quota: the default size works too

    def drain(self) -> bool:
        """
        Read what the pipe holds now, without waiting; True if that reached
        the end (no writer is left), and then the reader is closed.
        """
        while self.fd >= 0:
            try:
                data = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                self.close()
                return True
            if not data:
                self.close()
                return True
            self.on_data(data)
        return True

    def close(self) -> None:
        """Stop reading, even if a writer still holds the pipe."""
        if self.fd < 0:
            return
        self.stopReading()
        self.connectionLost(Failure(CONNECTION_DONE))

    def connectionLost(self, reason: Failure) -> None:
        if self.fd < 0:
            return
        abstract.FileDescriptor.connectionLost(self, reason)
        os.close(self.fd)
        self.fd = -1
        self.on_closed()


@implementer(IReadDescriptor)
class ExitWatcher:
    """
    Calls ``on_exit(status)`` once, after reaping the child ``pid`` (its
    ``waitpid`` status; None if something else reaped it first).
    """

    def __init__(self, reactor: Any, pid: int, on_exit: Callable[[int | None], None]) -> None:
        self.reactor = reactor
        self.pid = pid
        self.on_exit = on_exit
        self.done = False
        self._fd = -1
        self._poll: Any = None
        self._poll_delay = 0.01
        #: How the exit is noticed: "pidfd", or "reap" (the fallback).
        self.kind = "pidfd"
        try:
            self._fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self.kind = "reap"
            # No pidfd (old kernel, or no descriptor left): the reactor's
            # SIGCHLD handling reaps registered pids, and a slow poll covers
            # a reactor run without signal handlers.
            twisted_process.registerReapProcessHandler(pid, self)
            if not self.done:
                self._schedule_poll()
        else:
            reactor.addReader(self)

    # IReadDescriptor (the pidfd becomes readable when the process exits).

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        self.reapProcess()

    def connectionLost(self, reason: Failure) -> None:
        self._close_fd()

    def logPrefix(self) -> str:
        return "sysadm-dispatch-exit"

    # Twisted's reap handler interface (the fallback).

    def reapProcess(self) -> None:
        """Reap the process if it has exited; never blocks."""
        if self.done:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            log.warn("process {pid} was reaped by someone else; its exit status is unknown", pid=self.pid)
            self._ended(None)
            return
        if pid == 0:
            return
        self._ended(status)

    def processEnded(self, status: int) -> None:
        self._ended(status)

    def _ended(self, status: int | None) -> None:
        if self.done:
            return
        self.done = True
        if self._fd >= 0:
            self.reactor.removeReader(self)
            self._close_fd()
        elif twisted_process.reapProcessHandlers.get(self.pid) is self:
            twisted_process.unregisterReapProcessHandler(self.pid, self)
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
        self.on_exit(status)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _schedule_poll(self) -> None:
        self._poll = self.reactor.callLater(self._poll_delay, self._polled)
        self._poll_delay = min(self._poll_delay * 2, _FALLBACK_POLL_MAX)

    def _polled(self) -> None:
        self._poll = None
        self.reapProcess()
        if not self.done:
            self._schedule_poll()
