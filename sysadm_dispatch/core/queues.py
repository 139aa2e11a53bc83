"""
Named queues: the order in which pending jobs start and how many of a queue's
jobs may run at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from .job import RUNNING, Job


class Queue:
    """
    One named queue.  ``limit`` is how many of its jobs may run at once;
    0 means no limit (everything starts at once, as ``no_queue``).

    Running and pending jobs are kept apart, each in arrival order, so that
    what may start next is found without walking a long queue: a queue of
    thousands of pending jobs costs the same per request as an empty one.
    """

    def __init__(self, name: str, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"queue {name!r}: limit must be 0 or more")
        self.name = name
        self.limit = limit
        self._running: dict[str, Job] = {}
        self._pending: dict[str, Job] = {}

    def __len__(self) -> int:
        return len(self._running) + len(self._pending)

    def __iter__(self) -> Iterator[Job]:
        """Queue order: running jobs, then pending ones in the order they will start."""
        return iter([*self._running.values(), *self._pending.values()])

    @property
    def numbered(self) -> bool:
        """Queues that hold jobs back report a position for each job."""
        return self.limit != 0

    def running_count(self) -> int:
        return len(self._running)

    def pending_count(self) -> int:
        return len(self._pending)

    def add(self, job: Job) -> None:
        (self._running if job.state == RUNNING else self._pending)[job.id] = job

    def started(self, job: Job) -> None:
        """``job``, one of this queue's pending jobs, is running now."""
        self._pending.pop(job.id, None)
        self._running[job.id] = job

    def remove(self, job: Job) -> None:
        self._running.pop(job.id, None)
        self._pending.pop(job.id, None)

    def startable(self) -> list[Job]:
        """The pending jobs that may start now, in queue order."""
        if self.limit == 0:
            return list(self._pending.values())
        room = self.limit - len(self._running)
        if room <= 0:
            return []
        return list(islice(self._pending.values(), room))
