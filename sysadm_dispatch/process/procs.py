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

import uuid
from collections.abc import Iterator, Mapping, Sequence

from twisted.internet import process as twisted_process
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from ..reactors import IProcessReactor
from .backends import DEFAULT_SPAWNER, SPAWNERS, spawn_process
from .proctable import (
    MARKER,
    JobTree,
    ProcInfo,
    children_of_self,
    read_marker,
    read_stat,
    reap,
    signal_group,
)
from .sweeps import Sweeper
from .tracked import Leader

log = Logger()

class ProcessTracker:
    """
    Starts commands and finds, signals and reaps the processes of jobs.  One
    per server, made by whoever builds it and handed to the dispatcher: it
    knows every command leader it started, which is how it tells orphans
    apart from them.
    """

    def __init__(self, reactor: IProcessReactor, spawner: str = DEFAULT_SPAWNER) -> None:
        if spawner not in SPAWNERS:
            raise ValueError(f"no spawner {spawner!r} (one of {', '.join(SPAWNERS)})")
        self.reactor = reactor
        #: The backend commands are started with (see backends.py).
        self.spawner = spawner
        #: Whether orphans are re-parented to this process (see subreaper.py).
        self.subreaper = False
        self.leaders: set[int] = set()
        #: The trees of the jobs running now, by token.
        self._trees: dict[str, JobTree] = {}
        self.sweeper = Sweeper(self)
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
        self.leaders.add(pid)

    def leader_exited(self, pid: int) -> None:
        self.leaders.discard(pid)

    # Looking.

    def known_child(self, pid: int) -> bool:
        """A child this process started on purpose: a job's leader, or one of Twisted's."""
        return pid in self.leaders or pid in twisted_process.reapProcessHandlers

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
            if pgid in self.leaders:
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
            if self.known_child(pid):
                continue
            info = read_stat(pid)
            if info is None:
                continue
            if info.gone:
                reap(pid)
                continue
            yield info

    # Finding and signalling: the sweeps (sweeps.py).

    def sweep(self, tree: JobTree, sig: int | None = None) -> Deferred[int]:
        """Find the job's processes, signal them with ``sig`` if given; fires with how many were alive."""
        return self.sweeper.sweep(tree, sig)

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
