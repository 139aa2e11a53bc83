"""
Scheduling: the job table and the named queues, which jobs may start and
when, and the pace of starting them.  With a store, a job starts only once
its start is recorded, so that a job that may have run is never run again
after a crash (docs/persistence.rst).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..store.database import StoreError
from .job import PENDING, Job, positions
from .journal import Journal, Unavailable
from .queues import Queue
from .spec import DEFAULT_QUEUES, InvalidJob, JobSpec

log = Logger()

#: Seconds between attempts to record a job's start while the store cannot write.
START_RETRY_SECONDS = 1.0
#: Jobs started in one go: the rest of a big run start on the next turns of
#: the reactor, so that other requests are answered in between (starting a
#: thousand jobs takes about half a second).
STARTS_PER_TURN = 32


class Scheduler:
    """
    Owns the job table (every pending and running job, by id) and the
    queues, and decides when each pending job starts: ``launch(job)`` is
    called for each, at most ``STARTS_PER_TURN`` per turn of the reactor.
    """

    def __init__(self, reactor: IReactorTime, queues: Mapping[str, int] | None, journal: Journal,
                 launch: Callable[[Job], None]) -> None:
        self.reactor = reactor
        self.journal = journal
        self.launch = launch
        self.queues: dict[str, Queue] = {}
        for name, limit in {**DEFAULT_QUEUES, **(queues or {})}.items():
            self.queues[name] = Queue(name, limit)
        #: The job table: every pending and running job, by id.
        self.jobs: dict[str, Job] = {}
        #: Jobs being recorded (with a store): their ids are taken, but they are not visible yet...
        self.reserved: dict[str, Job] = {}
        #: ...and those of them that start as soon as they are recorded.
        self._promised: set[str] = set()
        #: Jobs whose queue slot is taken but that do not run yet: their
        #: start is being recorded, or they wait their turn to start.
        self._starting_jobs: set[Job] = set()
        self._to_start: deque[Job] = deque()
        self._start_call: IDelayedCall | None = None
        self._start_budget = STARTS_PER_TURN
        self._start_retry: IDelayedCall | None = None
        #: Jobs whose start the store could not record: they wait for the retry.
        self._retrying: set[Job] = set()
        self._starting = False
        self._draining = False
        self.stopping = False

    # Accepting.

    def check(self, specs: Sequence[JobSpec], max_pending: int) -> None:
        """What only the live dispatcher can judge about new jobs."""
        for spec in specs:
            if spec.id in self.jobs:
                raise InvalidJob(f"job {spec.id!r}: a job with this id is already {self.jobs[spec.id].state}")
            if spec.id in self.reserved:
                raise InvalidJob(f"job {spec.id!r}: a job with this id is already being queued")
            if spec.queue not in self.queues:
                raise InvalidJob(f"job {spec.id!r}: unknown queue {spec.queue!r}")
            if spec.cwd is not None and not os.path.isdir(spec.cwd):
                raise InvalidJob(f"job {spec.id!r}: cwd {spec.cwd!r} is not an existing directory")
        pending = sum(queue.pending_count() for queue in self.queues.values()) + len(self.reserved)
        if pending + len(specs) > max_pending:
            raise Unavailable(f"the dispatcher already holds {pending} pending jobs (limit {max_pending})")
        if self.stopping:
            raise Unavailable("the dispatcher is shutting down")

    def reserve(self, jobs: Sequence[Job]) -> set[str]:
        """
        New jobs are being recorded: take their ids, and say which may start
        as soon as they are recorded (those whose queue has room now, with
        no job waiting ahead of them, counting the room taken by jobs still
        being recorded).
        """
        promised: set[str] = set()
        if not self.stopping:
            # Counted from the few running and starting jobs, not by walking
            # queues that may hold thousands of pending ones.
            active = {name: queue.running_count() for name, queue in self.queues.items()}
            for job in self._starting_jobs:
                if self.jobs.get(job.id) is job:
                    active[job.queue] += 1
            # Queues where a job waits already, queued or still being recorded.
            blocked = {name for name, queue in self.queues.items() if len(queue) > active[name]}
            blocked |= {job.queue for job in self.reserved.values() if job.id not in self._promised}
            taken = dict(active)
            for job_id in self._promised:
                taken[self.reserved[job_id].queue] += 1
            for job in jobs:
                limit = self.queues[job.queue].limit
                if job.queue not in blocked and (limit == 0 or taken[job.queue] < limit):
                    promised.add(job.id)
                    taken[job.queue] += 1
                else:
                    blocked.add(job.queue)
        for job in jobs:
            self.reserved[job.id] = job
        self._promised.update(promised)
        return promised

    def release(self, jobs: Sequence[Job], promised: Collection[str]) -> None:
        """The jobs of ``reserve`` are recorded, or could not be."""
        for job in jobs:
            self.reserved.pop(job.id, None)
        self._promised.difference_update(promised)

    def add(self, job: Job) -> None:
        """Into the table and its queue (a pending job, or one recorded as running)."""
        self.jobs[job.id] = job
        self.queues[job.queue].add(job)

    def accepted(self, jobs: Sequence[Job], promised: Collection[str] = ()) -> None:
        """New jobs were added: the promised ones start in their turn, and whatever else may."""
        for job in jobs:
            if job.id not in promised:
                continue
            if self.stopping:
                self.journal.mark_pending(job.id)
            else:
                self._queue_start(job)
        self.start_ready()  # which starts what is queued, too

    def withdraw(self, job: Job) -> None:
        """A pending job leaves its queue (killed): not listed, never started; still in the table."""
        self.queues[job.queue].remove(job)

    def remove(self, job: Job) -> None:
        """A job finished: out of its queue and of the table."""
        self.queues[job.queue].remove(job)
        del self.jobs[job.id]

    def listing(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Active jobs by queue, in the shape of the ``list`` action."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for queue in self.queues.values():
            if len(queue):
                out[queue.name] = {job.id: job.list_entry(pos) for job, pos in positions(list(queue), queue.numbered)}
        return out

    # Starting.

    def start_ready(self) -> None:
        """Start the pending jobs whose queue has room (with a store, once their start is recorded)."""
        if self._starting or self.stopping:
            return
        self._starting = True
        try:
            progress = True
            while progress:
                progress = False
                for queue in self.queues.values():
                    for job in queue.startable():
                        if job in self._starting_jobs or job in self._retrying:
                            continue
                        progress = True
                        self._begin(job)
        finally:
            self._starting = False
        self._drain_starts()

    def _begin(self, job: Job) -> None:
        if not self.journal.durable:
            self._queue_start(job)
            return
        self._starting_jobs.add(job)

        def recorded(_: object) -> None:
            self._starting_jobs.discard(job)
            if not self._may_start(job):
                return  # killed meanwhile; its end is recorded after this
            if self.stopping:
                self.journal.mark_pending(job.id)
                return
            self._queue_start(job)
            self._drain_starts()

        def not_recorded(f: Failure) -> None:
            self._starting_jobs.discard(job)
            if not f.check(StoreError):
                log.failure("bug while starting job {job_id}", f, job_id=job.id)
                return
            log.error("job {job_id} waits: the store cannot record its start: {error}", job_id=job.id,
                      error=f.getErrorMessage())
            self._retrying.add(job)
            if self._start_retry is None and not self.stopping:
                self._start_retry = self.reactor.callLater(START_RETRY_SECONDS, self._retry_starts)

        d = self.journal.mark_started(job.id, self.reactor.seconds()).addCallbacks(recorded, not_recorded)
        self.journal.track(d)

    def _may_start(self, job: Job) -> bool:
        return self.jobs.get(job.id) is job and job.state == PENDING and job.kill_request is None

    def _retry_starts(self) -> None:
        self._start_retry = None
        self._retrying.clear()
        self.start_ready()

    def _queue_start(self, job: Job) -> None:
        """``job`` may start (its start is recorded, with a store): it starts in its turn."""
        self._starting_jobs.add(job)
        self._to_start.append(job)

    def _drain_starts(self) -> None:
        """
        Start the waiting jobs, at most ``STARTS_PER_TURN`` while a backlog
        lasts; the others on the next turns.  (When stopping, none starts:
        every waiting one is pending again.)
        """
        if self._draining:
            return
        self._draining = True
        try:
            while self._to_start and (self._start_budget > 0 or self.stopping):
                job = self._to_start.popleft()
                self._starting_jobs.discard(job)
                if not self._may_start(job):
                    continue  # killed while it waited
                if self.stopping:
                    self.journal.mark_pending(job.id)
                    continue
                self.queues[job.queue].started(job)
                self.launch(job)
                self._start_budget -= 1
        finally:
            self._draining = False
        if not self._to_start:
            self._start_budget = STARTS_PER_TURN
        elif self._start_call is None:
            self._start_call = self.reactor.callLater(0, self._next_starts)

    def _next_starts(self) -> None:
        self._start_call = None
        self._start_budget = STARTS_PER_TURN
        self._drain_starts()

    def stop(self) -> None:
        """The server stops: nothing starts any more; jobs waiting to start are pending again."""
        self.stopping = True
        for call in (self._start_retry, self._start_call):
            if call is not None and call.active():
                call.cancel()
        self._start_retry = self._start_call = None
        self._drain_starts()
