"""
Named queues: the order in which pending jobs start and how many of a queue's
jobs may run at once.
"""

from __future__ import annotations

from collections.abc import Iterator

from .job import RUNNING, Job


class Queue:
    """
    One named queue.  ``limit`` is how many of its jobs may run at once;
    0 means no limit (everything starts at once, as ``no_queue``).
    """

    def __init__(self, name: str, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"queue {name!r}: limit must be 0 or more")
        self.name = name
        self.limit = limit
        # Insertion order is queue order: running jobs, then pending ones.
        self._jobs: dict[str, Job] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        running = [j for j in self._jobs.values() if j.state == RUNNING]
        pending = [j for j in self._jobs.values() if j.state != RUNNING]
        return iter(running + pending)

    @property
    def numbered(self) -> bool:
        """Queues that hold jobs back report a position for each job."""
        return self.limit != 0

    def running_count(self) -> int:
        return sum(1 for j in self._jobs.values() if j.state == RUNNING)

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job

    def remove(self, job: Job) -> None:
        self._jobs.pop(job.id, None)

    def startable(self) -> list[Job]:
        """The pending jobs that may start now, in queue order."""
        pending = [j for j in self._jobs.values() if j.state != RUNNING]
        if self.limit == 0:
            return pending
        room = self.limit - self.running_count()
        return pending[: max(room, 0)]
