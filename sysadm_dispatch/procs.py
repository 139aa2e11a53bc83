"""
Finding every process a job started, so that ending a job ends all of it.

A process-group signal reaches only the processes that stayed in the group.
A grandchild that called ``setsid`` or double-forked into the background has
left it, so each job's processes are also found through ``/proc``:

* its **sessions**: every command is started as the leader of a new session
  (and process group) with the leader's pid as its id, and whatever stays in
  that session or group belongs to the job;
* an **environment marker**: every job process is started with
  ``SYSADM_DISPATCH_JOB=<token>``, unique per job, which its descendants
  inherit through ``setsid`` and double forks unless they clear or replace
  their environment;
* **ancestry**: the descendants of any process found by the two rules above
  (this is what catches a process that cleared its environment while its
  parent is still there);
* processes found before keep belonging to the job while they live.

A process counts only if it started after the job did (so a recycled pid is
never taken for one of the job's), and a zombie counts as gone.

When the server is a **child subreaper** (``become_subreaper``, done by the
twistd server), processes orphaned by a job are re-parented to the server
instead of to init: they stay findable as the server's children, the server
reaps them (with ``waitpid`` on each such pid only, never a blanket wait, so
no other child's exit status is stolen), and at shutdown it ends whatever of
them is left.  What is *not* found: a process that cleared its environment,
left the job's session, and whose parent had already exited when the server
looked; and anything that was handed to another process (such as init or a
service manager) to start.  The full statement is in docs/processes.rst.

All of this runs on the reactor thread: reading ``/proc`` is memory, not
disk, and the scans of several jobs that want one in the same reactor turn
share a single pass.
"""

from __future__ import annotations

import ctypes
import os
import signal
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet import process as twisted_process
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .spawn import ExitWatcher, OutputReader, SpawnError, open_output_pipe, plan, spawn

log = Logger()

#: The environment variable that marks a job's processes.
MARKER = "SYSADM_DISPATCH_JOB"
_MARKER_KEY = MARKER.encode() + b"="
PR_SET_CHILD_SUBREAPER = 36
#: How often a subreaper server reaps orphans that exited, at the latest.
REAP_INTERVAL = 2.0
#: Rounds of stopping newly found processes before a tree is sent SIGKILL.
FREEZE_ROUNDS = 4


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
    fields = data[data.rindex(b")") + 2 :].split()
    return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode(), int(fields[19]))


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
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return [int(word) for word in f.read().split()]
    except OSError:
        return []


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pgid: int, sig: int) -> bool:
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
    #: Session (and process group) ids still in use: the pids of the job's
    #: command leaders, each with the leader's start time.
    sessions: dict[int, int] = field(default_factory=dict)
    #: No process of the job started before this (clock ticks since boot).
    start: int = 0
    #: Processes found so far: pid -> start time.
    members: dict[int, int] = field(default_factory=dict)

    def add_leader(self, pid: int, start: int | None) -> None:
        if start is None:
            return  # gone already (and reaped by someone else): nothing to follow
        if not self.sessions and not self.members:
            self.start = start
        self.sessions[pid] = start
        self.members[pid] = start

    def session_recycled(self, sid: int, info: ProcInfo | None) -> bool:
        """
        Whether the id of session ``sid`` now names someone else's group: a
        process with that pid exists and is not the leader that started it.
        (The kernel does not reuse a pid while a session or group still
        uses it as its id, so a different process with that pid means the
        job's session ended.)
        """
        if info is None or info.start == self.sessions.get(sid):
            return False
        del self.sessions[sid]
        return True

    def retire(self, sid: int) -> None:
        """The session has no process left: its id may be reused from now on."""
        self.sessions.pop(sid, None)


class Command:
    """One started command: its pid, its output pipe and its exit watcher."""

    def __init__(self, pid: int, reader: OutputReader) -> None:
        self.pid = pid
        self.reader = reader
        self.watcher: ExitWatcher | None = None

    @property
    def output_open(self) -> bool:
        return self.reader.open

    def drain(self) -> bool:
        """Take what the output pipe holds; True if it is closed now."""
        return self.reader.drain()

    def abandon(self) -> None:
        """Stop reading the output, although something still holds the pipe."""
        self.reader.close()


class _Sweep:
    """The requests of one tree waiting for the next scan."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.waiters: list[Deferred[int]] = []


class ProcessTracker:
    """
    Starts commands and finds, signals and reaps the processes of jobs.  One
    per reactor (``tracker_for``): it knows every command leader it started,
    which is how it tells orphans apart from them.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        #: Whether orphans are re-parented to this process (see ``become_subreaper``).
        self.subreaper = False
        self._leaders: dict[int, Command] = {}
        self._sweeps: dict[JobTree, _Sweep] = {}
        self._scan_call: Any = None
        self._nonce = uuid.uuid4().hex[:12]
        self._count = 0

    # Starting.

    def new_tree(self) -> JobTree:
        self._count += 1
        return JobTree(f"{self._nonce}-{self._count}")

    def start_command(
        self,
        tree: JobTree,
        argv: Sequence[str],
        cwd: str | None,
        env: Mapping[str, str],
        on_output: Callable[[bytes], None],
        on_output_closed: Callable[[], None],
        on_exit: Callable[[int | None], None],
    ) -> Command:
        """
        Start one command of a job (raises ``SpawnError``).  ``on_exit`` gets
        the ``waitpid`` status once the command's leader has exited and been
        reaped; the output is read until every writer has closed the pipe.
        """
        env = {**env, MARKER: tree.token}
        executable, args, search = plan(argv, cwd, env)
        read_fd, write_fd = open_output_pipe()
        try:
            pid = spawn(executable, args, env, write_fd, search)
        except SpawnError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        info = read_stat(pid)
        tree.add_leader(pid, info.start if info is not None else None)
        command = Command(pid, OutputReader(self.reactor, read_fd, on_output, on_output_closed))
        self._leaders[pid] = command

        def exited(status: int | None) -> None:
            self._leaders.pop(pid, None)
            on_exit(status)

        command.watcher = ExitWatcher(self.reactor, pid, exited)
        return command

    # Looking.

    def _known_child(self, pid: int) -> bool:
        """A child this process started on purpose: a job's leader, or one of Twisted's."""
        return pid in self._leaders or pid in twisted_process.reapProcessHandlers

    def quick_empty(self, tree: JobTree) -> bool:
        """
        Cheaply, whether nothing of the job is left (False: maybe something
        is, and a ``sweep`` will tell).  Exact for a subreaper: a process of
        the job that outlived the job's commands either stayed in one of its
        process groups or was orphaned and re-parented here.
        """
        for sid in list(tree.sessions):
            if sid in self._leaders:
                return False
            if not _signal_group(sid, 0):
                tree.retire(sid)
            elif not tree.session_recycled(sid, read_stat(sid)):
                return False
        if not self.subreaper:
            return True
        for pid in children_of_self():
            if self._known_child(pid):
                continue
            info = read_stat(pid)
            if info is None:
                continue
            if info.gone:
                _reap(pid)
                continue
            if info.start < tree.start:
                continue
            if tree.members.get(pid) == info.start or info.session in tree.sessions or info.pgrp in tree.sessions:
                return False
            if read_marker(pid) == tree.token:
                return False
        return True

    def signal_groups(self, tree: JobTree, sig: int) -> None:
        """Signal the job's process groups at once (the sweep that finds the rest comes next turn)."""
        for sid in list(tree.sessions):
            if sid not in self._leaders and tree.session_recycled(sid, read_stat(sid)):
                continue
            if not _signal_group(sid, sig):
                if sid not in self._leaders:
                    tree.retire(sid)
            elif sig == signal.SIGTERM:
                _signal_group(sid, signal.SIGCONT)

    def sweep(self, tree: JobTree, sig: int | None = None) -> Deferred[int]:
        """
        Find the job's processes (in the next reactor turn, sharing one pass
        over ``/proc`` with every other job asking meanwhile), send them
        ``sig`` if given, reap those that are this process's zombies; fires
        with how many were alive.  ``SIGTERM`` is followed by ``SIGCONT`` so
        that stopped processes can act on it; before ``SIGKILL`` the tree is
        frozen with ``SIGSTOP`` so that nothing forks out of reach meanwhile.
        """
        request = self._sweeps.get(tree)
        if request is None:
            request = self._sweeps[tree] = _Sweep()
        if sig is not None and (request.signal is None or sig == signal.SIGKILL):
            request.signal = sig
        d: Deferred[int] = Deferred()
        request.waiters.append(d)
        if self._scan_call is None:
            self._scan_call = self.reactor.callLater(0, self._run_sweeps)
        return d

    def _run_sweeps(self) -> None:
        self._scan_call = None
        sweeps, self._sweeps = self._sweeps, {}
        found = self.find(sweeps)
        results: dict[JobTree, int] = {}
        kill = [tree for tree, request in sweeps.items() if request.signal == signal.SIGKILL]
        if kill:
            found.update(self._freeze(kill, found))
        for tree, request in sweeps.items():
            alive = [info for info in found[tree] if not info.gone]
            for info in found[tree]:
                if info.gone and info.ppid == os.getpid() and not self._known_child(info.pid):
                    _reap(info.pid)
            if request.signal is not None:
                for info in alive:
                    _signal(info.pid, request.signal)
                if request.signal == signal.SIGTERM:
                    for info in alive:
                        _signal(info.pid, signal.SIGCONT)
            results[tree] = len(alive)
        for tree, request in sweeps.items():
            for d in request.waiters:
                d.callback(results[tree])

    def _freeze(self, trees: list[JobTree], found: dict[JobTree, list[ProcInfo]]) -> dict[JobTree, list[ProcInfo]]:
        """
        Stop every process of these trees and look again until no new one
        turns up (a bounded number of rounds), so that SIGKILL reaches all.
        """
        stopped: dict[JobTree, dict[int, ProcInfo]] = {tree: {} for tree in trees}
        current = {tree: found[tree] for tree in trees}
        for _ in range(FREEZE_ROUNDS):
            new = False
            for tree in trees:
                for info in current[tree]:
                    if not info.gone and info.pid not in stopped[tree]:
                        _signal(info.pid, signal.SIGSTOP)
                        new = True
                    stopped[tree][info.pid] = info
            if not new:
                break
            current = self.find(dict.fromkeys(trees))
        return {tree: list(stopped[tree].values()) for tree in trees}

    def find(self, trees: Iterable[JobTree]) -> dict[JobTree, list[ProcInfo]]:
        """One pass over ``/proc``: the processes of each tree (zombies included)."""
        trees = list(trees)
        out: dict[JobTree, list[ProcInfo]] = {tree: [] for tree in trees}
        if not trees:
            return out
        table = scan(min(tree.start for tree in trees))
        by_session: dict[int, JobTree] = {}
        by_token: dict[str, JobTree] = {}
        by_member: dict[int, JobTree] = {}
        for tree in trees:
            by_token[tree.token] = tree
            for sid in list(tree.sessions):
                if sid not in self._leaders and tree.session_recycled(sid, table.get(sid)):
                    continue
                by_session[sid] = tree
            for pid in tree.members:
                by_member[pid] = tree
        owner: dict[int, JobTree] = {}
        children: dict[int, list[int]] = {}
        used: set[int] = set()
        for pid, info in table.items():
            children.setdefault(info.ppid, []).append(pid)
            found = by_session.get(info.session) or by_session.get(info.pgrp)
            if found is not None:
                used.add(info.session)
                used.add(info.pgrp)
            else:
                found = by_member.get(pid)
                if found is not None and found.members[pid] != info.start:
                    found = None
            if found is None and not info.gone:
                marker = read_marker(pid)
                found = by_token.get(marker) if marker is not None else None
            if found is not None and info.start >= found.start:
                owner[pid] = found
        for sid, tree in by_session.items():
            if sid not in used and sid not in self._leaders:
                tree.retire(sid)
        # Descendants of what was found belong to the same job.
        stack = list(owner)
        while stack:
            pid = stack.pop()
            tree = owner[pid]
            for child in children.get(pid, ()):
                if child not in owner and table[child].start >= tree.start:
                    owner[child] = tree
                    stack.append(child)
        for pid, tree in owner.items():
            info = table[pid]
            out[tree].append(info)
            if not info.gone:
                tree.members[pid] = info.start
        for tree in trees:
            # Forget members that are gone, so the table stays small.
            for pid in [pid for pid in tree.members if pid not in owner or owner[pid] is not tree]:
                del tree.members[pid]
        return out

    # Being a subreaper: orphans come here, and are reaped and ended here.

    def become_subreaper(self) -> bool:
        """
        Have orphaned descendants re-parented to this process rather than to
        init (Linux ``PR_SET_CHILD_SUBREAPER``).  Only for a process whose
        children are all started by this tracker or by Twisted's
        ``spawnProcess``: orphans that exit are reaped here, one known pid
        at a time.
        """
        if self.subreaper:
            return True
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            ok = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            ok = False
        if not ok:
            log.warn("cannot become a child subreaper; orphaned job processes are found by their marker only")
            return False
        self.subreaper = True
        return True

    def strays(self) -> list[ProcInfo]:
        """Orphans re-parented here that no job has claimed; zombies among them are reaped."""
        out = []
        for pid in children_of_self():
            if self._known_child(pid):
                continue
            info = read_stat(pid)
            if info is None:
                continue
            if info.gone:
                _reap(pid)
            else:
                out.append(info)
        return out

    def reap_strays(self) -> None:
        if self.subreaper:
            self.strays()

    def stop_strays(self, grace: float) -> Deferred[None]:
        """
        End the orphans no job claimed, and their descendants: SIGTERM, then
        SIGKILL after ``grace`` seconds; fires once they are gone.
        """
        if not self.subreaper:
            return succeed(None)
        strays = self.strays()
        if not strays:
            return succeed(None)
        tree = JobTree("\0", start=min(info.start for info in strays))
        tree.members.update({info.pid: info.start for info in strays})
        log.info("stopping {count} orphaned processes of finished jobs", count=len(strays))
        done: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + grace

        def check(alive: int, sig: int | None) -> None:
            if not alive:
                done.callback(None)
                return
            if sig != signal.SIGKILL and self.reactor.seconds() >= deadline:
                self.sweep(tree, signal.SIGKILL).addCallback(check, signal.SIGKILL)
                return
            if sig == signal.SIGKILL and self.reactor.seconds() >= deadline + 2.0:
                log.warn("{count} orphaned processes survived SIGKILL", count=alive)
                done.callback(None)
                return
            self.reactor.callLater(0.05, lambda: self.sweep(tree).addCallback(check, sig))

        self.sweep(tree, signal.SIGTERM).addCallback(check, signal.SIGTERM)
        return done


_trackers: dict[int, tuple[Any, ProcessTracker]] = {}


def tracker_for(reactor: Any) -> ProcessTracker:
    """The process tracker of this reactor (one per process in practice)."""
    entry = _trackers.get(id(reactor))
    if entry is None or entry[0] is not reactor:
        entry = _trackers[id(reactor)] = (reactor, ProcessTracker(reactor))
    return entry[1]


class SubreaperService(Service):
    """
    Makes the server a child subreaper while it runs and reaps orphans that
    exited.  (The dispatcher's ``stopService`` ends the orphans still alive,
    after the running jobs, through ``stop_strays``.)
    """

    name = "subreaper"

    def __init__(self, reactor: Any) -> None:
        self.tracker = tracker_for(reactor)
        self._loop = LoopingCall(self.tracker.reap_strays)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        if self.tracker.become_subreaper():
            self._loop.start(REAP_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
