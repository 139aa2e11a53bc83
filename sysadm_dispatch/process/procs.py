"""
Finding every process a job started, so that ending a job ends all of it.

A process-group signal misses a grandchild that called ``setsid`` or
double-forked, so a job's processes are found through ``/proc`` as well:
its process groups, the ``SYSADM_DISPATCH_JOB=<token>`` marker in their
environment, the descendants of either, and whatever was found before; only
processes started after the job count, and zombies count as gone.  A server
that is a child subreaper (``SubreaperService``) also keeps the orphans of
its jobs as its own children: it finds them there, reaps them one pid at a
time (never a blanket wait), and ends them when it stops.  The rules, and
what they do not catch, are stated in docs/processes.rst.

Everything here runs on the reactor thread: ``/proc`` is memory, not disk,
and the jobs that want a look in the same reactor turn share one pass.
"""

from __future__ import annotations

import ctypes
import os
import signal
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import process as twisted_process
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .proctable import (
    MARKER,
    JobTree,
    ProcInfo,
    children_lists,
    children_of_self,
    read_marker,
    read_stat,
    reap,
    scan,
    signal_group,
    signal_pid,
    walk,
)
from .spawn import ExitWatcher, OutputReader, open_output_pipe, plan, spawn

log = Logger()

PR_SET_CHILD_SUBREAPER = 36
#: How often a subreaper server reaps orphans that exited, at the latest.
REAP_INTERVAL = 2.0
#: Rounds of stopping newly found processes before a tree is sent SIGKILL.
FREEZE_ROUNDS = 4


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
        #: The trees of the jobs running now, by token.
        self._trees: dict[str, JobTree] = {}
        self._sweeps: dict[JobTree, _Sweep] = {}
        self._scan_call: Any = None
        self._nonce = uuid.uuid4().hex[:12]
        self._count = 0

    # Starting.

    def new_tree(self) -> JobTree:
        """The tree of a job about to start; ``forget`` it once the job is over."""
        self._count += 1
        tree = JobTree(f"{self._nonce}-{self._count}")
        self._trees[tree.token] = tree
        return tree

    def forget(self, tree: JobTree) -> None:
        self._trees.pop(tree.token, None)

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
        except BaseException:
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
        is, and a ``sweep`` will tell).  As exact as a sweep for a subreaper:
        a live process of the job whose parent is gone was re-parented here,
        so the topmost live one of any line of descent is in one of the
        job's groups, a process found before, or a child of this process.
        Without being a subreaper, it looks at the groups and the processes
        found before only.
        """
        for pgid in list(tree.groups):
            if pgid in self._leaders:
                return False
            if not signal_group(pgid, 0):
                tree.retire(pgid)
            elif not tree.group_recycled(pgid, read_stat(pgid)):
                return False
        for pid, start in list(tree.members.items()):
            info = read_stat(pid)
            if info is not None and info.start == start and not info.gone:
                return False
        if not self.subreaper:
            return True
        for info in self._live_orphans():
            if info.start < tree.start:
                continue
            if tree.members.get(info.pid) == info.start or info.pgrp in tree.groups or info.session in tree.groups:
                return False
            if read_marker(info.pid) == tree.token:
                return False
        return True

    def _live_orphans(self) -> Iterator[ProcInfo]:
        """
        The live processes re-parented to this one (not the ones it spawned
        itself); zombies among them are reaped on the way.
        """
        for pid in children_of_self():
            if self._known_child(pid):
                continue
            info = read_stat(pid)
            if info is None:
                continue
            if info.gone:
                reap(pid)
                continue
            yield info

    def signal_groups(self, tree: JobTree, sig: int) -> None:
        """Signal the job's process groups (``SIGTERM`` followed by ``SIGCONT``)."""
        for pgid in list(tree.groups):
            if pgid not in self._leaders and tree.group_recycled(pgid, read_stat(pgid)):
                continue
            if not signal_group(pgid, sig):
                if pgid not in self._leaders:
                    tree.retire(pgid)
            elif sig == signal.SIGTERM:
                signal_group(pgid, signal.SIGCONT)

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
        try:
            results = self._sweep_now(sweeps)
        except Exception:
            # A bug; the jobs waiting must not hang: they take it that
            # something is alive, and end through the grace and SIGKILL.
            log.failure("looking for the processes of {count} jobs failed", count=len(sweeps))
            results = dict.fromkeys(sweeps, 1)
        for tree, request in sweeps.items():
            for d in request.waiters:
                d.callback(results[tree])

    def _sweep_now(self, sweeps: dict[JobTree, _Sweep]) -> dict[JobTree, int]:
        found = self.find(sweeps)
        results: dict[JobTree, int] = {}
        kill = [tree for tree, request in sweeps.items() if request.signal == signal.SIGKILL]
        if kill:
            found.update(self._freeze(kill, found))
        for tree, request in sweeps.items():
            alive = [info for info in found[tree] if not info.gone]
            for info in found[tree]:
                if info.gone and info.ppid == os.getpid() and not self._known_child(info.pid):
                    reap(info.pid)
            if request.signal is not None:
                # Found first, signalled after: a process whose parent dies
                # of this signal would otherwise be orphaned before it was
                # seen, its ancestry lost.
                self.signal_groups(tree, request.signal)
                for info in alive:
                    signal_pid(info.pid, request.signal)
                if request.signal == signal.SIGTERM:
                    for info in alive:
                        signal_pid(info.pid, signal.SIGCONT)
            results[tree] = len(alive)
        return results

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
                        signal_pid(info.pid, signal.SIGSTOP)
                        new = True
                    stopped[tree][info.pid] = info
            if not new:
                break
            current = self.find(dict.fromkeys(trees))
        return {tree: list(stopped[tree].values()) for tree in trees}

    def find(self, trees: Iterable[JobTree]) -> dict[JobTree, list[ProcInfo]]:
        """One look through ``/proc``: the processes of each tree (zombies included)."""
        trees = list(trees)
        out: dict[JobTree, list[ProcInfo]] = {tree: [] for tree in trees}
        if not trees:
            return out
        if self.subreaper and children_lists():
            # Every process of a job descends from one of its leaders, from
            # one found before, or from an orphan re-parented here: walking
            # down from those sees all of them, without reading the stat of
            # every process on the machine.
            roots = {pid for pid in children_of_self() if not self._known_child(pid)}
            for tree in trees:
                roots.update(tree.groups)
                roots.update(tree.members)
            table = walk(roots)
        else:
            table = scan(min(tree.start for tree in trees))
        by_group: dict[int, JobTree] = {}
        by_token: dict[str, JobTree] = {}
        by_member: dict[int, JobTree] = {}
        for tree in trees:
            by_token[tree.token] = tree
            for pgid in list(tree.groups):
                if pgid not in self._leaders and tree.group_recycled(pgid, table.get(pgid)):
                    continue
                by_group[pgid] = tree
            for pid in tree.members:
                by_member[pid] = tree
        owner: dict[int, JobTree] = {}
        children: dict[int, list[int]] = {}
        used: set[int] = set()
        for pid, info in table.items():
            children.setdefault(info.ppid, []).append(pid)
            found = by_group.get(info.pgrp) or by_group.get(info.session)
            if found is not None:
                used.add(info.pgrp)
                used.add(info.session)
            else:
                found = by_member.get(pid)
                if found is not None and found.members[pid] != info.start:
                    found = None
            if found is None and not info.gone:
                marker = read_marker(pid)
                found = by_token.get(marker) if marker is not None else None
            if found is not None and info.start >= found.start:
                owner[pid] = found
        for pgid, tree in by_group.items():
            if pgid not in used and pgid not in self._leaders:
                tree.retire(pgid)
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
        """
        Orphans re-parented here that no running job claims; zombies among
        them are reaped.
        """
        out = []
        groups = {pgid for tree in self._trees.values() for pgid in tree.groups}
        for info in self._live_orphans():
            if info.pgrp not in groups and info.session not in groups and read_marker(info.pid) not in self._trees:
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
