"""
The dispatcher: the one object that changes job state.  It takes jobs in,
starts them when their queue has room (``Scheduler``), records them in the
store (``Journal``), kills them on request, tells each job's output as it
comes (``LiveUpdates``), decides how each one ended, and publishes what
happens to each job as events.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..process.procs import ProcessTracker
from ..process.runner import JobRunner
from ..process.subreaper import stop_orphans
from ..reactors import IDispatchReactor
from ..store.database import Store
from ..store.records import HistoryPage
from .events import EventHub
from .job import FINISHED, PENDING, Job
from .journal import Journal, Unavailable
from .kills import PendingKills
from .live import LiveUpdates
from .outcome import Outcome
from .runs import Runner, RunnerFactory, Runs
from .scheduler import Scheduler
from .spec import NO_QUEUE, JobSpec, Limits, specs_from_run_args

__all__ = ["Dispatcher", "Runner", "Unavailable"]

log = Logger()


class Dispatcher(Service):
    """
    Runs jobs in named queues.  ``no_queue`` runs everything at once;
    ``pkg_queue`` and ``iocage_queue`` one job at a time, in order.

    With a ``store`` (opened by ``startService``, closed by ``stopService``)
    accepted jobs survive a restart or a crash and finished jobs are kept as
    history: see docs/persistence.rst.  Without one, nothing outlives the
    process.
    """

    name = "dispatcher"

    def __init__(
        self,
        reactor: IDispatchReactor,
        *,
        queues: Mapping[str, int] | None = None,
        kill_grace: float = 5.0,
        job_timeout: float = 0.0,
        log_cap_bytes: int = 1 << 20,
        limits: Limits = Limits(),
        max_pending: int = 10000,
        environ: Mapping[str, str] | None = None,
        events: EventHub | None = None,
        update_interval: float = 1.0,
        runner_factory: RunnerFactory = JobRunner,
        store: Store | None = None,
        processes: ProcessTracker | None = None,
    ) -> None:
        self.reactor = reactor
        self.kill_grace = kill_grace
        self.log_cap_bytes = log_cap_bytes
        self.limits = limits
        self.max_pending = max_pending
        self.environ = dict(os.environ if environ is None else environ)
        self.events = events if events is not None else EventHub(reactor)
        #: Starts and tracks the processes of jobs (one per server).
        self.processes = processes if processes is not None else ProcessTracker(reactor)
        self.store = store
        self.journal = Journal(store)
        self.scheduler = Scheduler(reactor, queues, self.journal, lambda job: self.runs.start(job))
        self.queues = self.scheduler.queues
        #: The job table: every pending and running job, by id.
        self.jobs = self.scheduler.jobs
        self.live = LiveUpdates(reactor, self.events, update_interval)
        self.runs = Runs(reactor, journal=self.journal, events=self.events, live=self.live,
                         runner_factory=runner_factory, processes=self.processes, environ=self.environ,
                         kill_grace=kill_grace,
                         job_timeout=job_timeout, remove=self.scheduler.remove,
                         ended=lambda _: self.scheduler.start_ready())
        self._runners = self.runs.runners
        #: ``observe(job, change)`` for each job submitted, started, finished
        #: or recovered from the store (the metrics count with these).
        self.observers = self.runs.observers
        self.trimmer = self.runs.trimmer
        self._killed_pending = PendingKills(reactor, self._finish_killed)

    # Accepting work.

    def parse_run(self, args: Mapping[str, Any], submitted_by: str | None = None) -> list[JobSpec]:
        """Read and check the jobs of a ``run`` request (from user ``submitted_by``); raises ``InvalidJob``."""
        specs = specs_from_run_args(args, self.queues, self.limits, submitted_by=submitted_by)
        self.check(specs)
        return specs

    def check(self, specs: Sequence[JobSpec]) -> None:
        """What only the live dispatcher can judge about new jobs (``InvalidJob``, ``Unavailable``)."""
        self.scheduler.check(specs, self.max_pending)

    def submit(self, specs: Sequence[JobSpec]) -> Deferred[list[Job]]:
        """
        Queue jobs that ``parse_run`` accepted; all of them or none.  Raises
        ``InvalidJob`` or ``Unavailable`` at once if they cannot be taken.
        With a store, the jobs become visible and start only once durably
        recorded: the Deferred fires then, or fails with ``Unavailable`` if
        they could not be recorded (and then none of them was queued).
        """
        if not self.journal.recovered:
            # Jobs recovered from the store go first, and a new job may not
            # take the id of one of them.
            return self.when_recovered().addCallback(lambda _: self.submit(specs))
        self.check(specs)
        now = self.reactor.seconds()
        jobs = [Job(spec, self.log_cap_bytes, now) for spec in specs]
        if not self.journal.durable:
            self._accept(jobs)
            return succeed(jobs)
        # Jobs that will start at once are recorded as started in the same
        # commit: one write, and the reply finds them running.
        promised = self.scheduler.reserve(jobs)

        def recorded(_: object) -> list[Job]:
            self.scheduler.release(jobs, promised)
            self._accept(jobs, promised)
            return jobs

        def not_recorded(f: Failure) -> Failure:
            self.scheduler.release(jobs, promised)
            return f

        rows = [(job.spec, now, now if job.id in promised else None) for job in jobs]
        return self.journal.track(self.journal.add(rows).addCallbacks(recorded, not_recorded))

    def _accept(self, jobs: Sequence[Job], promised: Iterable[str] = ()) -> None:
        for job in jobs:
            self.scheduler.add(job)
            self.runs.publish(job)
            self.runs.tell(job, "submitted")
        self.scheduler.accepted(jobs, set(promised))

    def run(self, job_id: str | None, commands: str | Sequence[str], queue: str = NO_QUEUE, *,
            cwd: str | None = None, env: Mapping[str, str] | None = None, timeout: float | None = None,
            submitted_by: str | None = None) -> Deferred[dict[str, Any]]:
        """
        Queue one job (for ``submitted_by``, if given: a name for the
        records); the Deferred fires with its finished record (the ``args``
        of its ``finished`` event), or fails with ``Unavailable`` if the job
        could not be recorded.  Raises ``InvalidJob``.
        """
        obj: dict[str, Any] = {"commands": commands if isinstance(commands, str) else list(commands), "queue": queue}
        optional = {"id": job_id, "cwd": cwd, "env": dict(env) if env else None, "timeout": timeout or None}
        obj.update((key, value) for key, value in optional.items() if value is not None)
        [spec] = self.parse_run({"action": "run", "jobs": [obj]}, submitted_by)
        # Waiting before submitting: a job may finish as soon as it is queued.
        done = self.runs.wait(spec.id)

        def refused(f: Failure) -> None:
            self.runs.forget_wait(spec.id, done)
            done.errback(f)

        try:
            submitted = self.submit([spec])
        except Exception:
            self.runs.forget_wait(spec.id, done)
            raise
        submitted.addErrback(refused)
        return done

    def finished(self, job_id: str) -> Deferred[dict[str, Any]]:
        """Fires with the job's finished record once the active job ``job_id`` ends."""
        if job_id not in self.jobs and job_id not in self.scheduler.reserved:
            raise KeyError(job_id)
        return self.runs.wait(job_id)

    def _finish_killed(self, job: Job) -> None:
        if self.jobs.get(job.id) is job:
            self.runs.finish(job, None, logged=True)

    # Looking and killing.

    def list_jobs(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Active jobs by queue, in the shape of the ``list`` action."""
        return self.scheduler.listing()

    def kill(self, job_ids: Iterable[str], by: str | None = None, *,
             shutdown: bool = False) -> Deferred[tuple[list[str], list[str]]]:
        """
        Kill jobs (for user ``by``, if given: a name for the records and the
        log; ``shutdown``: the server stops, and the jobs end ``interrupted``):
        a running one is signalled; a pending one leaves its queue at once and
        never starts (``PendingKills`` finishes them a slice per turn).  Fires
        with ``(killed, not_found)`` once every killed job has finished.
        """
        if not self.journal.recovered:
            ids = list(job_ids)
            return self.when_recovered().addCallback(lambda _: self.kill(ids, by, shutdown=shutdown))
        killed: list[str] = []
        not_found: list[str] = []
        waits: list[Deferred[Any]] = []
        pending: list[Job] = []
        for job_id in dict.fromkeys(job_ids):
            job = self.jobs.get(job_id)
            if job is None:
                not_found.append(job_id)
                continue
            killed.append(job_id)
            first = job.request_kill(by, shutdown=shutdown)
            if job.state != PENDING:
                waits.append(self.finished(job_id))
                log.info("job {job_id} killed while running by {by}", job_id=job_id, by=by)
                self._runners[job_id].kill()
            elif not first:
                waits.append(self.finished(job_id))  # killed by an earlier request, finishing
            else:
                self.scheduler.withdraw(job)
                pending.append(job)
        if pending:
            log.info("jobs {ids!r} killed while pending by {by}", ids=[job.id for job in pending], by=by)
            waits.append(self._killed_pending.add(pending))
        self.scheduler.start_ready()
        d = DeferredList(waits, consumeErrors=True)
        return d.addCallback(lambda _: (killed, not_found))

    # The service.

    def startService(self) -> None:
        """With a store: open it and take up the jobs it holds (see ``Journal.open``)."""
        super().startService()
        self.journal.open(self.queues, self.log_cap_bytes, self._take_up)

    def _take_up(self, requeued: list[Job], lost: list[Job]) -> None:
        now = self.reactor.seconds()
        for job in requeued:
            self.scheduler.add(job)
            self.runs.publish(job)
            self.runs.tell(job, "recovered")
        for job in lost:
            job.finish(now, Outcome.INTERRUPTED)
            self.runs.told_finished(job, "recovered")
        # (The jobs queued again start once recovery is over: see when_recovered.)
        self.journal.when_recovered().addCallback(lambda _: self.scheduler.start_ready())

    def stopService(self) -> Deferred[None]:
        """
        Kill every running job (SIGTERM, then SIGKILL after the grace);
        fires once every one of their processes is gone.  They finish as
        ``interrupted`` (not ``killed``: no user asked).  With a store,
        pending jobs stay recorded for the next start, and the store is
        closed once every write is done.
        """
        super().stopService()
        self.scheduler.stop()
        self.trimmer.stop()
        self._killed_pending.stop()  # pending jobs killed before the stop are recorded as killed
        running = [job.id for job in self.jobs.values() if job.state != PENDING and job.state != FINISHED]
        if running:
            log.info("stopping: killing {count} running jobs", count=len(running))
            d = self.kill(running, "shutdown", shutdown=True).addCallback(lambda _: None)
        else:
            d = succeed(None)
        # Then whatever orphans of jobs no job claimed (a subreaper server's).
        d.addCallback(lambda _: stop_orphans(self.processes, self.kill_grace))
        return d.addCallback(lambda _: self.journal.close())

    @property
    def stopping(self) -> bool:
        """True once the server has begun to stop."""
        return self.scheduler.stopping

    @property
    def recovered(self) -> bool:
        """False while the jobs of the store are being taken up after a start."""
        return self.journal.recovered

    def when_recovered(self) -> Deferred[None]:
        """
        Fires once the jobs of the store have been taken up (at once without
        a store): before that, the job table and the history are incomplete.
        """
        return self.journal.when_recovered()

    # The history.

    def read_history(self, start: float, end: float, limit: int) -> Deferred[HistoryPage]:
        """Finished records in ``[start, end]``, newest first, at most ``limit``, and whether more matched."""
        return self.journal.history(start, end, limit)

    def last_record(self, job_id: str) -> Deferred[dict[str, Any] | None]:
        """The live record of ``job_id`` if it is pending or running, else its latest finished one, or None."""
        job = self.jobs.get(job_id)
        if job is not None:
            return succeed(job.live_record())
        return self.journal.latest(job_id)
