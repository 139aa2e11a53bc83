"""
The dispatcher: the one object that changes job state.  It keeps the job
table and the named queues, starts jobs when their queue has room, kills
them on request, and publishes what happens to each job as events.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from .events import EventHub
from .job import (
    DEFAULT_QUEUES,
    FINISHED,
    NO_QUEUE,
    PENDING,
    InvalidJob,
    Job,
    JobSpec,
    Limits,
    positions,
    specs_from_run_args,
)
from .queues import Queue
from .runner import JobRunner

log = Logger()


class Unavailable(Exception):
    """The dispatcher cannot take this work now (full, or stopping)."""


class Dispatcher(Service):
    """
    Runs jobs in named queues.  ``no_queue`` runs everything at once;
    ``pkg_queue`` and ``iocage_queue`` one job at a time, in order.
    """

    name = "dispatcher"

    def __init__(
        self,
        reactor: Any = None,
        *,
        queues: Mapping[str, int] | None = None,
        kill_grace: float = 5.0,
        log_cap_bytes: int = 1 << 20,
        limits: Limits = Limits(),
        max_pending: int = 10000,
        environ: Mapping[str, str] | None = None,
        events: EventHub | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.queues: dict[str, Queue] = {}
        for name, limit in {**DEFAULT_QUEUES, **(queues or {})}.items():
            self.queues[name] = Queue(name, limit)
        self.kill_grace = kill_grace
        self.log_cap_bytes = log_cap_bytes
        self.limits = limits
        self.max_pending = max_pending
        self.environ = dict(os.environ if environ is None else environ)
        self.events = events if events is not None else EventHub()
        #: The job table: every pending and running job, by id.
        self.jobs: dict[str, Job] = {}
        self._runners: dict[str, JobRunner] = {}
        self._waiters: dict[str, list[Deferred[dict[str, Any]]]] = {}
        self._starting = False
        self._stopping = False

    # Accepting work.

    def parse_run(self, args: Mapping[str, Any]) -> list[JobSpec]:
        """Read and check the jobs of a ``run`` request; raises ``InvalidJob``."""
        specs = specs_from_run_args(args, self.queues, self.limits)
        self.check(specs)
        return specs

    def check(self, specs: Sequence[JobSpec]) -> None:
        """What only the live dispatcher can judge about new jobs."""
        for spec in specs:
            if spec.id in self.jobs:
                raise InvalidJob(f"job {spec.id!r}: a job with this id is already {self.jobs[spec.id].state}")
            if spec.queue not in self.queues:
                raise InvalidJob(f"job {spec.id!r}: unknown queue {spec.queue!r}")
            if spec.cwd is not None and not os.path.isdir(spec.cwd):
                raise InvalidJob(f"job {spec.id!r}: cwd {spec.cwd!r} is not an existing directory")
        pending = sum(1 for job in self.jobs.values() if job.state == PENDING)
        if pending + len(specs) > self.max_pending:
            raise Unavailable(f"the dispatcher already holds {pending} pending jobs (limit {self.max_pending})")
        if self._stopping:
            raise Unavailable("the dispatcher is shutting down")

    def submit(self, specs: Sequence[JobSpec]) -> list[Job]:
        """Queue jobs that ``parse_run`` accepted; all of them or none."""
        self.check(specs)
        now = self.reactor.seconds()
        jobs = [Job(spec, self.log_cap_bytes, now) for spec in specs]
        for job in jobs:
            self.jobs[job.id] = job
            self.queues[job.queue].add(job)
            log.info("job {job_id} queued in {queue}: {commands!r}", job_id=job.id, queue=job.queue,
                     commands=list(job.spec.commands))
            self._publish(job)
        self._start_ready()
        return jobs

    def run(
        self,
        job_id: str | None,
        commands: str | Sequence[str],
        queue: str = NO_QUEUE,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        Queue one job; the Deferred fires with its finished record (the
        ``args`` of its ``finished`` event).  Raises ``InvalidJob``.
        """
        obj: dict[str, Any] = {
            "commands": commands if isinstance(commands, str) else list(commands),
            "queue": queue,
        }
        if job_id is not None:
            obj["id"] = job_id
        if cwd is not None:
            obj["cwd"] = cwd
        if env:
            obj["env"] = dict(env)
        if timeout:
            obj["timeout"] = timeout
        [spec] = self.parse_run({"action": "run", "jobs": [obj]})
        [job] = self.submit([spec])
        return self.finished(job.id)

    def finished(self, job_id: str) -> Deferred[dict[str, Any]]:
        """Fires with the job's finished record once the active job ``job_id`` ends."""
        if job_id not in self.jobs:
            raise KeyError(job_id)
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiters.setdefault(job_id, []).append(d)
        return d

    # Running.

    def _start_ready(self) -> None:
        if self._starting or self._stopping:
            return
        self._starting = True
        try:
            progress = True
            while progress:
                progress = False
                for queue in self.queues.values():
                    for job in queue.startable():
                        progress = True
                        self._start(job)
        finally:
            self._starting = False

    def _start(self, job: Job) -> None:
        job.start(self.reactor.seconds())
        runner = JobRunner(self.reactor, job, environ=self.environ, kill_grace=self.kill_grace)
        self._runners[job.id] = runner
        log.info("job {job_id} started", job_id=job.id)
        self._publish(job)
        runner.start().addCallback(self._ended)

    def _ended(self, job: Job) -> None:
        self._runners.pop(job.id, None)
        self._finish(job)
        self._start_ready()

    def _finish(self, job: Job) -> None:
        job.finish(self.reactor.seconds())
        self.queues[job.queue].remove(job)
        del self.jobs[job.id]
        log.info(
            "job {job_id} finished: success={success} killed={killed} timed_out={timed_out} return_codes={codes}",
            job_id=job.id, success=job.success, killed=job.killed, timed_out=job.timed_out, codes=job.return_codes,
        )
        record = job.record()
        self.events.publish("dispatcher", record)
        for d in self._waiters.pop(job.id, []):
            d.callback(record)

    def _publish(self, job: Job) -> None:
        self.events.publish("dispatcher", job.record())

    # Looking and killing.

    def list_jobs(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Active jobs by queue, in the shape of the ``list`` action."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for queue in self.queues.values():
            if not len(queue):
                continue
            out[queue.name] = {job.id: job.list_entry(pos) for job, pos in positions(list(queue), queue.numbered)}
        return out

    def kill(self, job_ids: Iterable[str]) -> Deferred[tuple[list[str], list[str]]]:
        """
        Kill jobs: a pending one leaves its queue and never starts; a running
        one is signalled.  Fires with ``(killed, not_found)`` once every
        killed job has finished, its processes gone.
        """
        killed: list[str] = []
        not_found: list[str] = []
        waits = []
        for job_id in dict.fromkeys(job_ids):
            job = self.jobs.get(job_id)
            if job is None:
                not_found.append(job_id)
                continue
            killed.append(job_id)
            waits.append(self.finished(job_id))
            if job.state == PENDING:
                job.killed = True
                log.info("job {job_id} killed while pending", job_id=job_id)
                self._finish(job)
            else:
                log.info("job {job_id} killed while running", job_id=job_id)
                self._runners[job_id].kill()
        self._start_ready()
        d = DeferredList(waits, consumeErrors=True)
        return d.addCallback(lambda _: (killed, not_found))

    def stopService(self) -> Deferred[None]:
        """
        Kill every running job (SIGTERM, then SIGKILL after the grace);
        fires once every one of their processes is gone.
        """
        super().stopService()
        self._stopping = True
        running = [job.id for job in self.jobs.values() if job.state != PENDING and job.state != FINISHED]
        if not running:
            return succeed(None)
        log.info("stopping: killing {count} running jobs", count=len(running))
        return self.kill(running).addCallback(lambda _: None)
