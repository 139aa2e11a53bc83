"""
What ``/proc`` says about processes, and the record of which processes
belong to one job (``JobTree``).  procs.py decides what to do with them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

#: The environment variable that marks a job's processes.
MARKER = "SYSADM_DISPATCH_JOB"
_MARKER_KEY = MARKER.encode() + b"="


@dataclass(slots=True)
class ProcInfo:
    """What ``/proc/<pid>/stat`` says about a process."""

    pid: int
    ppid: int
    pgrp: int
    session: int
    state: str
    start: int  # clock ticks since boot

    @property
    def gone(self) -> bool:
        return self.state in ("Z", "X", "x")


def read_stat(pid: int) -> ProcInfo | None:
    """One process's stat line, or None if it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm (field 2) may contain anything, ")" included: split after the last one.
    try:
        fields = data[data.rindex(b")") + 2 :].split()
        return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode(), int(fields[19]))
    except (ValueError, IndexError):
        return None


def scan(min_start: int = 0) -> dict[int, ProcInfo]:
    """Every process on the machine that started at ``min_start`` or later."""
    table: dict[int, ProcInfo] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        info = read_stat(int(name))
        if info is not None and info.start >= min_start and info.ppid != 2 and info.pid != 2:
            table[info.pid] = info
    return table


def read_marker(pid: int) -> str | None:
    """The value of the job marker in a live process's environment, if any."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if data.startswith(_MARKER_KEY):
        at = 0
    else:
        at = data.find(b"\0" + _MARKER_KEY)
        if at < 0:
            return None
        at += 1
    end = data.find(b"\0", at)
    return data[at + len(_MARKER_KEY) : end if end >= 0 else len(data)].decode(errors="replace")


def children_of_self() -> list[int]:
    """
    The children of this process's main thread, which is where orphans are
    re-parented and where the reactor thread spawns.
    """
    pid = os.getpid()
    data = _read_all(f"/proc/{pid}/task/{pid}/children")
    return [int(word) for word in data.split()] if data else []


def _read_all(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def children_of(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (none if it is gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        data = _read_all(f"/proc/{pid}/task/{tid}/children")
        if data:
            out.extend(int(word) for word in data.split())
    return out


_children_lists: bool | None = None


def children_lists() -> bool:
    """Whether this kernel lists each task's children in ``/proc`` (``CONFIG_PROC_CHILDREN``)."""
    global _children_lists
    if _children_lists is None:
        pid = os.getpid()
        _children_lists = os.path.exists(f"/proc/{pid}/task/{pid}/children")
    return _children_lists


def walk(roots: Iterable[int]) -> dict[int, ProcInfo]:
    """``roots`` and every descendant of theirs, through the children lists."""
    table: dict[int, ProcInfo] = {}
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in table:
            continue
        info = read_stat(pid)
        if info is None:
            continue
        table[pid] = info
        if not info.gone:
            stack.extend(children_of(pid))
    return table


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it has no member left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(eq=False)
class JobTree:
    """The processes of one job, as far as they have been found."""

    token: str
    #: Process group (and session) ids still in use: the pids of the job's
    #: command leaders, each with the leader's start time.
    groups: dict[int, int] = field(default_factory=dict)
    #: No process of the job started before this (clock ticks since boot).
    start: int = 0
    #: Processes found so far: pid -> start time.
    members: dict[int, int] = field(default_factory=dict)

    def add_leader(self, pid: int, start: int | None) -> None:
        if start is None:
            return  # gone already (and reaped by someone else): nothing to follow
        if not self.groups and not self.members:
            self.start = start
        self.groups[pid] = start
        self.members[pid] = start

    def group_recycled(self, pgid: int, info: ProcInfo | None) -> bool:
        """
        Whether the id of group ``pgid`` now names someone else's: a process
        with that pid exists and is not the leader that started it.  (The
        kernel does not reuse a pid while a group or session still uses it as
        its id, so a different process with that pid means the job's group
        ended.)
        """
        if info is None or info.start == self.groups.get(pgid):
            return False
        del self.groups[pgid]
        return True

    def retire(self, pgid: int) -> None:
        """The group has no process left: its id may be reused from now on."""
        self.groups.pop(pgid, None)
