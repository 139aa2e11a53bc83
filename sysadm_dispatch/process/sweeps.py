"""
Sweeps: one look through ``/proc`` for the processes of the jobs that asked
in the same turn of the reactor, then the signals they asked for.  What
counts as a job's process is stated in docs/processes.rst and in procs.py.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .proctable import (
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

if TYPE_CHECKING:
    from .procs import ProcessTracker

log = Logger()

#: Rounds of stopping newly found processes before a tree is sent SIGKILL.
FREEZE_ROUNDS = 4


class _Sweep:
    """The requests of one tree waiting for the next scan."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.waiters: list[Deferred[int]] = []



class Sweeper:
    """
    Finds, signals and reaps the processes of job trees for a tracker,
    batching the requests of one reactor turn into one look.
    """

    def __init__(self, tracker: ProcessTracker) -> None:
        self.tracker = tracker
        self.reactor = tracker.reactor
        self._sweeps: dict[JobTree, _Sweep] = {}
        self._scan_call: Any = None

    def signal_groups(self, tree: JobTree, sig: int) -> None:
        """Signal the job's process groups (``SIGTERM`` followed by ``SIGCONT``)."""
        for pgid in list(tree.groups):
            if pgid not in self.tracker.leaders and tree.group_recycled(pgid, read_stat(pgid)):
                continue
            if not signal_group(pgid, sig):
                if pgid not in self.tracker.leaders:
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
                if info.gone and info.ppid == os.getpid() and not self.tracker.known_child(info.pid):
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
        if self.tracker.subreaper and children_lists():
            # Every process of a job descends from one of its leaders, from
            # one found before, or from an orphan re-parented here: walking
            # down from those sees all of them, without reading the stat of
            # every process on the machine.
            roots = {pid for pid in children_of_self() if not self.tracker.known_child(pid)}
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
                if pgid not in self.tracker.leaders and tree.group_recycled(pgid, table.get(pgid)):
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
            if pgid not in used and pgid not in self.tracker.leaders:
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
