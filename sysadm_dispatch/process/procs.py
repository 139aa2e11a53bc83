"""
Finding every process a job started, so that ending a job ends all of it.

A process-group signal misses a grandchild that called ``setsid`` or
double-forked, so a job's processes are found through ``/proc`` as well:
its process groups, the ``SYSADM_DISPATCH_JOB=<token>`` marker in their
environment, the descendants of either, and whatever was found before; only
processes started after the job count, and zombies count as gone.  A server
that is a child subreaper (subreaper.py) also keeps the orphans of
its jobs as its own children: it finds them there, reaps them one pid at a
time (never a blanket wait), and ends them when it stops.  The rules, and
what they do not catch, are stated in docs/processes.rst.

Everything here runs on the reactor thread: ``/proc`` is memory, not disk,
and the jobs that want a look in the same reactor turn share one pass.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from twisted.internet import process as twisted_process
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from .backends import DEFAULT_SPAWNER, SPAWNERS, spawn_process
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
from .reactor import ProcessReactor
from .tracked import Leader

log = Logger()

#: Rounds of stopping newly found processes before a tree is sent SIGKILL.
FREEZE_ROUNDS = 4


class _Sweep:
    """The requests of one tree waiting for the next scan."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.waiters: list[Deferred[int]] = []


class ProcessTracker:
    """
    Starts commands and finds, signals and reaps the processes of jobs.  One
    per server, made by whoever builds it and handed to the dispatcher: it
    knows every command leader it started, which is how it tells orphans
    apart from them.
    """

    def __init__(self, reactor: ProcessReactor, spawner: str = DEFAULT_SPAWNER) -> None:
        if spawner not in SPAWNERS:
            raise ValueError(f"no spawner {spawner!r} (one of {', '.join(SPAWNERS)})")
        self.reactor = reactor
        #: The backend commands are started with (see backends.py).
        self.spawner = spawner
        #: Whether orphans are re-parented to this process (see subreaper.py).
        self.subreaper = False
        self._leaders: set[int] = set()
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

    def spawn(
        self,
        tree: JobTree,
        protocol: ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str],
        path: str | None = None,
    ) -> None:
        """
        Start one command of a job's tree through this tracker's backend
        (raises ``SpawnError``).  ``protocol`` is connected to a transport
        whose ``signalProcess`` reaches the whole tree (``TreeTransport``).
        """
        env = {**env, MARKER: tree.token}
        spawn_process(self.reactor, Leader(self, tree, protocol), executable, args, env, path, spawner=self.spawner)

    def leader_started(self, tree: JobTree, pid: int) -> None:
        info = read_stat(pid)
        tree.add_leader(pid, info.start if info is not None else None)
        self._leaders.add(pid)

    def leader_exited(self, pid: int) -> None:
        self._leaders.discard(pid)

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

    # Orphans: a subreaper's own (see subreaper.py).

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
        """Reap the orphans that exited (a subreaper's periodic chore)."""
        if self.subreaper:
            self.strays()
