"""
Resolving a command and starting it cheaply.

``plan`` finds the program a command names (the way a shell would, with the
same exit codes when it cannot: 127 when the program cannot be found or
nothing could be started, 126 when it was found but cannot be executed), and
``spawn`` starts it with ``os.posix_spawn``: no fork of the server, no scan
of its open file descriptors (every descriptor this process opens is
close-on-exec, so the child only needs stdin, stdout and stderr set up), and
each command leads a process group of its own, so that the group can be
signalled as a whole.  A command's stdout and stderr share one pipe; stdin is
``/dev/null``.  The transports built on these are in backends.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from typing import Any

#: Exit code of a command that could not be found or started at all.
EXIT_NOT_FOUND = 127
#: Exit code of a command found but not executable.
EXIT_NOT_EXECUTABLE = 126

#: coreutils ``env -C DIR`` changes directory in the child: ``posix_spawn``
#: has no portable way to do it.
ENV = shutil.which("env") or "/usr/bin/env"

#: Every signal a child may have a disposition for: all are reset to their
#: defaults in the child, whatever this process ignores or handles.
_SIGNALS = sorted(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
_STDIO = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]


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


def plan(argv: Sequence[str], cwd: str | None, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """
    What to execute for one command: ``(executable, argv)``, to run in
    ``cwd`` if given; an executable without a ``/`` is searched on ``PATH``
    by the C library.  Raises ``SpawnError`` for a program that is missing or
    not executable, or a working directory that is gone.
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
        return program, [program, *argv[1:]]
    if "/" in word:
        return word, list(argv)
    if path_env == os.environ.get("PATH", os.defpath):
        # The C library searches PATH itself (it reads this process's PATH,
        # which is the job's here): cheaper than searching from Python.
        return word, list(argv)
    found = shutil.which(word, path=path_env)
    if found is None:
        raise SpawnError(f"program {word!r} not found on PATH")
    return found, [found, *argv[1:]]


def check_executable(executable: str, env: Mapping[str, str]) -> None:
    """Raise the ``SpawnError`` that starting ``executable`` (searched on the job's ``PATH``) would give."""
    if "/" not in executable:
        if shutil.which(executable, path=env.get("PATH", os.defpath)) is None:
            raise SpawnError(f"program {executable!r} not found on PATH")
        return
    problem = _not_executable(executable)
    if problem is not None:
        code = EXIT_NOT_FOUND if problem == "no such file" else EXIT_NOT_EXECUTABLE
        raise SpawnError(f"cannot execute {executable!r}: {problem}", code)


def in_directory(executable: str, argv: Sequence[str], path: str | None) -> tuple[str, list[str]]:
    """What to execute so that ``executable`` runs in directory ``path`` (unchanged if None)."""
    if path is None:
        return executable, list(argv)
    # env(1) changes directory, then executes the program in place.
    return ENV, [ENV, "-C", path, "--", executable, *argv[1:]]


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


def spawn(executable: str, argv: list[str], env: Mapping[str, str], output_fd: int) -> int:
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
    search = "/" not in executable
    start = os.posix_spawnp if search else os.posix_spawn
    group: dict[str, Any] = {"setsid": True} if has_controlling_terminal() else {"setpgroup": 0}
    try:
        return start(executable, argv, env, file_actions=actions, setsigdef=_SIGNALS, setsigmask=(), **group)
    except OSError as e:
        raise spawn_error(argv[0], e, search) from None


def spawn_error(word: str, e: OSError, search: bool) -> SpawnError:
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


