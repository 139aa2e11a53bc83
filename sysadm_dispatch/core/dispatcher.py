"""
The dispatcher: the one object that changes job state.  It keeps the job
table and the named queues, starts jobs when their queue has room, kills
them on request, and publishes what happens to each job as events.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..process.procs import ProcessTracker
from ..process.result import RunResult
from ..process.runner import JobRunner
from ..process.subreaper import stop_orphans
from ..store.database import HistoryPage, Opened, Store, StoreError
from .events import EventHub
from .job import (
    DEFAULT_QUEUES,
    EXIT_NOT_STARTED,
    FINISHED,
    NO_QUEUE,
    PENDING,
    RUNNING,
    InvalidJob,
    Job,
    JobSpec,
    Limits,
    positions,
    specs_from_run_args,
)
from .memory import Trimmer
from .queues import Queue

log = Logger()


class Unavailable(Exception):
    """The dispatcher cannot take this work now (full, stopping, or its store cannot write)."""


#: Seconds between attempts to record a job's start while the store cannot write.
START_RETRY_SECONDS = 1.0
#: Jobs started in one go: the rest of a big run start on the next turns of
#: the reactor, so that other requests are answered in between (starting a
#: thousand jobs takes about half a second).
STARTS_PER_TURN = 32
#: Pending jobs a kill finishes in one go: the rest on the next turns, for
#: the same reason (finishing 10,000 at once held other requests 2 s).
KILLS_PER_TURN = 128


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
        reactor: Any = None,
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
        runner_factory: Callable[..., Any] = JobRunner,
        store: Store | None = None,
        processes: ProcessTracker | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.queues: dict[str, Queue] = {}
        for name, limit in {**DEFAULT_QUEUES, **(queues or {})}.items():
            self.queues[name] = Queue(name, limit)
        self.kill_grace = kill_grace
        #: Seconds a job without a ``timeout`` of its own may run (0: no limit).
        self.job_timeout = job_timeout
        self.log_cap_bytes = log_cap_bytes
        self.limits = limits
        self.max_pending = max_pending
        self.environ = dict(os.environ if environ is None else environ)
        self.events = events if events is not None else EventHub(reactor=reactor)
        #: At most one ``running`` update per job per this many seconds.
        self.update_interval = update_interval
        self.runner_factory = runner_factory
        #: Starts and tracks the processes of jobs (one per server).
        self.processes = processes if processes is not None else ProcessTracker(reactor)
        self._updates: dict[str, Any] = {}
        self._last_update: dict[str, float] = {}
        #: The job table: every pending and running job, by id.
        self.jobs: dict[str, Job] = {}
        self._runners: dict[str, JobRunner[Job]] = {}
        self._waiters: dict[str, list[Deferred[dict[str, Any]]]] = {}
        self._starting = False
        self._stopping = False
        self.store = store
        # Durability bookkeeping (with a store): ids of jobs being recorded,
        # taken but not yet visible; jobs whose start is being recorded (their
        # queue slot is taken); running jobs ended by a server stop rather
        # than by a user; store writes not yet done.
        self._reserved: dict[str, Job] = {}
        self._promised: set[str] = set()
        #: Jobs whose queue slot is taken but that do not run yet: their
        #: start is being recorded, or they wait their turn to start.
        self._starting_jobs: set[Job] = set()
        self._to_start: deque[Job] = deque()
        self._start_call: Any = None
        self._start_budget = STARTS_PER_TURN
        self._draining = False
        # Pending jobs killed but not yet finished (see ``kill``), and the
        # kill requests waiting for them: (count finished when it is done, Deferred).
        self._to_finish: deque[Job] = deque()
        self._kills_done = 0
        self._kill_waits: deque[tuple[int, Deferred[None]]] = deque()
        self._kill_call: Any = None
        self._finishing = False
        self._interrupting: set[str] = set()
        self._writes = 0
        self._writes_waiters: list[Deferred[None]] = []
        self._recovered = store is None
        self._recovery_waiters: list[Deferred[None]] = []
        self._start_retry: Any = None
        #: ``observe(job, change)`` for each job submitted, started, finished
        #: or recovered from the store (the metrics count with these).
        self.observers: list[Callable[[Job, str], None]] = []
        #: Gives memory back after the output of finished jobs is let go.
        self.trimmer = Trimmer(reactor)

    # Accepting work.

    def parse_run(self, args: Mapping[str, Any], submitted_by: str | None = None) -> list[JobSpec]:
        """Read and check the jobs of a ``run`` request (from user ``submitted_by``); raises ``InvalidJob``."""
        specs = specs_from_run_args(args, self.queues, self.limits, submitted_by=submitted_by)
        self.check(specs)
        return specs

    def check(self, specs: Sequence[JobSpec]) -> None:
        """What only the live dispatcher can judge about new jobs."""
        for spec in specs:
            if spec.id in self.jobs:
                raise InvalidJob(f"job {spec.id!r}: a job with this id is already {self.jobs[spec.id].state}")
            if spec.id in self._reserved:
                raise InvalidJob(f"job {spec.id!r}: a job with this id is already being queued")
            if spec.queue not in self.queues:
                raise InvalidJob(f"job {spec.id!r}: unknown queue {spec.queue!r}")
            if spec.cwd is not None and not os.path.isdir(spec.cwd):
                raise InvalidJob(f"job {spec.id!r}: cwd {spec.cwd!r} is not an existing directory")
        pending = sum(queue.pending_count() for queue in self.queues.values()) + len(self._reserved)
        if pending + len(specs) > self.max_pending:
            raise Unavailable(f"the dispatcher already holds {pending} pending jobs (limit {self.max_pending})")
        if self._stopping:
            raise Unavailable("the dispatcher is shutting down")

    def submit(self, specs: Sequence[JobSpec]) -> Deferred[list[Job]]:
        """
        Queue jobs that ``parse_run`` accepted; all of them or none.  Raises
        ``InvalidJob`` or ``Unavailable`` at once if they cannot be taken.
        With a store, the jobs become visible and start only once durably
        recorded: the Deferred fires then, or fails with ``Unavailable`` if
        they could not be recorded (and then none of them was queued).
        """
        if not self._recovered:
            # Jobs recovered from the store go first, and a new job may not
            # take the id of one of them.
            return self.when_recovered().addCallback(lambda _: self.submit(specs))
        self.check(specs)
        now = self.reactor.seconds()
        jobs = [Job(spec, self.log_cap_bytes, now) for spec in specs]
        if self.store is None:
            self._accept(jobs)
            return succeed(jobs)
        # Jobs that will start at once are recorded as started in the same
        # commit: one write, and the reply finds them running.
        promised = self._promise_starts(jobs)
        for job in jobs:
            self._reserved[job.id] = job
        self._promised.update(promised)

        def release() -> None:
            for job in jobs:
                self._reserved.pop(job.id, None)
            self._promised.difference_update(promised)

        def recorded(_: object) -> list[Job]:
            release()
            self._accept(jobs, promised)
            return jobs

        def not_recorded(f: Failure) -> Failure:
            release()
            if not f.check(StoreError):
                return f
            log.error("jobs {ids!r} refused: the store could not record them: {error}",
                      ids=[job.id for job in jobs], error=f.getErrorMessage())
            return Failure(Unavailable(f"{f.getErrorMessage()}; no job of this request was queued"))

        rows = [(job.spec, now, now if job.id in promised else None) for job in jobs]
        return self._track(self.store.add(rows).addCallbacks(recorded, not_recorded))

    def _promise_starts(self, jobs: Sequence[Job]) -> set[str]:
        """
        Which of these new jobs may start as soon as they are recorded: those
        whose queue has room now, with no job waiting ahead of them, counting
        the room taken by jobs still being recorded.
        """
        promised: set[str] = set()
        if self._stopping:
            return promised
        # Counted from the few running and starting jobs, not by walking
        # queues that may hold thousands of pending ones.
        active = {name: 0 for name in self.queues}
        for job in (*(self.jobs.get(job_id) for job_id in self._runners), *self._starting_jobs):
            if job is not None and self.jobs.get(job.id) is job:
                active[job.queue] += 1
        # Queues where a job waits already, queued or still being recorded.
        blocked = {name for name, queue in self.queues.items() if len(queue) > active[name]}
        blocked |= {job.queue for job in self._reserved.values() if job.id not in self._promised}
        taken = dict(active)
        for job_id in self._promised:
            taken[self._reserved[job_id].queue] += 1
        for job in jobs:
            limit = self.queues[job.queue].limit
            if job.queue not in blocked and (limit == 0 or taken[job.queue] < limit):
                promised.add(job.id)
                taken[job.queue] += 1
            else:
                blocked.add(job.queue)
        return promised

    def _accept(self, jobs: Sequence[Job], promised: Collection[str] = ()) -> None:
        for job in jobs:
            self.jobs[job.id] = job
            self.queues[job.queue].add(job)
            self._publish(job)
            self._tell(job, "submitted")
        for job in jobs:
            if job.id not in promised:
                continue
            if self._stopping:
                self._keep_pending(job)
            else:
                self._queue_start(job)
        self._start_ready()  # which starts what is queued, too

    def run(
        self,
        job_id: str | None,
        commands: str | Sequence[str],
        queue: str = NO_QUEUE,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        submitted_by: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        Queue one job (for ``submitted_by``, if given: a name for the
        records); the Deferred fires with its finished record (the ``args``
        of its ``finished`` event), or fails with ``Unavailable`` if the job
        could not be recorded.  Raises ``InvalidJob``.
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
        [spec] = self.parse_run({"action": "run", "jobs": [obj]}, submitted_by)
        # Waiting before submitting: a job may finish as soon as it is queued.
        done: Deferred[dict[str, Any]] = Deferred()
        self._waiters.setdefault(spec.id, []).append(done)

        def forget() -> None:
            waiters = self._waiters.get(spec.id, [])
            if done in waiters:
                waiters.remove(done)
                if not waiters:
                    del self._waiters[spec.id]

        def refused(f: Failure) -> None:
            forget()
            done.errback(f)

        try:
            submitted = self.submit([spec])
        except Exception:
            forget()
            raise
        submitted.addErrback(refused)
        return done

    def finished(self, job_id: str) -> Deferred[dict[str, Any]]:
        """Fires with the job's finished record once the active job ``job_id`` ends."""
        if job_id not in self.jobs and job_id not in self._reserved:
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
                        if job in self._starting_jobs:
                            continue
                        progress = True
                        self._begin(job)
        finally:
            self._starting = False
        self._drain_starts()

    def _begin(self, job: Job) -> None:
        """
        Start a job; with a store, only once its start is on disk, so that a
        job that may have run is never run again after a crash.
        """
        store = self.store
        if store is None:
            self._queue_start(job)
            return
        self._starting_jobs.add(job)

        def recorded(_: object) -> None:
            self._starting_jobs.discard(job)
            if self.jobs.get(job.id) is not job or job.state != PENDING or job.killed:
                return  # killed meanwhile; its end is recorded after this
            if self._stopping:
                self._keep_pending(job)
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
            if self._start_retry is None and not self._stopping:
                self._start_retry = self.reactor.callLater(START_RETRY_SECONDS, self._retry_starts)

        d = store.mark_started(job.id, self.reactor.seconds()).addCallbacks(recorded, not_recorded)
        self._track(d)

    def _retry_starts(self) -> None:
        self._start_retry = None
        self._start_ready()

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
            while self._to_start and (self._start_budget > 0 or self._stopping):
                job = self._to_start.popleft()
                self._starting_jobs.discard(job)
                if self.jobs.get(job.id) is not job or job.state != PENDING or job.killed:
                    continue  # killed while it waited
                if self._stopping:
                    self._keep_pending(job)
                    continue
                self._start(job)
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

    def _keep_pending(self, job: Job) -> None:
        """A job recorded as started will not start now (the server stops): pending again in the store."""
        if self.store is not None:
            self._track(self.store.mark_pending(job.id)).addErrback(self._log_store_error, job.id)

    def _start(self, job: Job) -> None:
        job.start(self.reactor.seconds())
        self.queues[job.queue].started(job)
        if job.timeout is None and self.job_timeout:
            job.timeout = self.job_timeout
        self._publish(job)
        self._tell(job, "started")
        try:
            runner = self.runner_factory(
                self.reactor, job, environ=self.environ, kill_grace=self.kill_grace, on_output=self._output,
                processes=self.processes,
            )
            self._runners[job.id] = runner
            done = runner.start()
        except Exception as e:
            # A bug, or something unforeseen: the job ends as one that could not start.
            log.failure("bug while starting job {job_id}", job_id=job.id)
            self._runners.pop(job.id, None)
            if len(job.logs) == len(job.return_codes):
                job.begin_command()
            job.logs[-1].write(f"sysadm-dispatch: cannot run command: internal error ({type(e).__name__}); "
                               "the server log has the details\n".encode())
            job.end_command(EXIT_NOT_STARTED)
            self._ended(job)
            return
        done.addCallback(self._run_ended, job)

    def _run_ended(self, result: RunResult, job: Job) -> None:
        """How the run ended, on the job's record."""
        if result.stopped == "timed_out":
            job.timed_out = True
            job.killed_by = "timeout"
        elif result.stopped == "killed":
            job.killed = True
        job.signal = result.signal
        job.escalated = result.escalated
        self._ended(job)

    def _stopped_early(self, job: Job) -> bool:
        """Whether someone (a user, its timeout, a shutdown) ended the job already."""
        runner = self._runners.get(job.id)
        return job.killed or job.timed_out or (runner is not None and runner.stopped is not None)

    def _ended(self, job: Job) -> None:
        self._runners.pop(job.id, None)
        self._finish(job)
        self._start_ready()

    def _output(self, job: Job, index: int, data: bytes) -> None:
        """
        New output, or (``data`` empty) the next command of the chain
        started: a ``running`` update follows, with the exit codes so far and
        the command now running, throttled per job on the
        leading edge: the job's first output, and the first after a quiet
        ``update_interval``, goes out at once (on the next turn of the
        reactor, with whatever else came in that turn); output that comes
        sooner after an update waits for the interval to end.
        """
        if job.id in self._updates:
            return
        last = self._last_update.get(job.id)
        delay = 0.0 if last is None else max(0.0, last + self.update_interval - self.reactor.seconds())
        self._updates[job.id] = self.reactor.callLater(delay, self._send_update, job)

    def _send_update(self, job: Job) -> None:
        del self._updates[job.id]
        if job.state != RUNNING or not job.has_news():
            return
        self._last_update[job.id] = self.reactor.seconds()
        self.events.publish("dispatcher", job.record(job.running_update()))
        if job.cut:
            # More than one update may carry: the rest follows on the next turn.
            self._updates[job.id] = self.reactor.callLater(0, self._send_update, job)

    def _finish(self, job: Job, *, logged: bool = False) -> None:
        if job.id in self._interrupting:
            # Ended because the server stops, not by a user's kill.
            self._interrupting.discard(job.id)
            job.killed = False
            job.interrupted = True
        update = self._updates.pop(job.id, None)
        if update is not None and update.active():
            update.cancel()
        self._last_update.pop(job.id, None)
        job.finish(self.reactor.seconds())
        self.queues[job.queue].remove(job)
        del self.jobs[job.id]
        # The requester's line (rpc) says who ran what; the history keeps every
        # outcome.  The log adds a line only for a job that did not succeed:
        # a line per job more was a tenth of a busy server's time.
        if not job.success and not logged:
            log.info(
                "job {job_id} did not succeed: killed={killed} timed_out={timed_out} interrupted={interrupted} "
                "return_codes={codes}",
                job_id=job.id, killed=job.killed, timed_out=job.timed_out, interrupted=job.interrupted,
                codes=job.return_codes,
            )
        record = job.record()
        self._record_finished(job, record)
        self._tell(job, "finished")
        self.events.publish("dispatcher", record)
        for d in self._waiters.pop(job.id, []):
            d.callback(record)
        self.trimmer.released(sum(min(log.total, log.cap) for log in job.logs))

    def _tell(self, job: Job, change: str) -> None:
        for observe in self.observers:
            observe(job, change)

    def _publish(self, job: Job) -> None:
        if self.events.subscriber_count("dispatcher"):  # a record costs more than the check
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

    def kill(self, job_ids: Iterable[str], by: str | None = None) -> Deferred[tuple[list[str], list[str]]]:
        """
        Kill jobs (for user ``by``, if given: a name for the records and the
        log): a pending one leaves its queue and never starts; a running one
        is signalled.  Fires with ``(killed, not_found)`` once every killed
        job has finished, its processes gone.

        Pending jobs leave their queues at once (no longer listed, never
        started) and finish ``KILLS_PER_TURN`` per turn of the reactor, so
        that killing thousands keeps answering other requests meanwhile.
        """
        if not self._recovered:
            ids = list(job_ids)
            return self.when_recovered().addCallback(lambda _: self.kill(ids, by))
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
            if not self._stopped_early(job):
                job.killed_by = by  # the first to end it
            if job.state != PENDING:
                waits.append(self.finished(job_id))
                log.info("job {job_id} killed while running by {by}", job_id=job_id, by=by)
                self._runners[job_id].kill()
            elif job.killed:
                waits.append(self.finished(job_id))  # killed by an earlier request, finishing
            else:
                job.killed = True
                self.queues[job.queue].remove(job)
                pending.append(job)
        if pending:
            log.info("jobs {ids!r} killed while pending by {by}", ids=[job.id for job in pending], by=by)
            self._to_finish.extend(pending)
            done: Deferred[None] = Deferred()
            self._kill_waits.append((self._kills_done + len(self._to_finish), done))
            waits.append(done)
            self._finish_killed()
        self._start_ready()
        d = DeferredList(waits, consumeErrors=True)
        return d.addCallback(lambda _: (killed, not_found))

    def _finish_killed(self, budget: int | None = KILLS_PER_TURN) -> None:
        """Finish killed pending jobs: ``budget`` of them now (all if None), the rest on the next turns."""
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        if self._finishing:
            return
        self._finishing = True
        try:
            while self._to_finish and (budget is None or budget > 0):
                job = self._to_finish.popleft()
                self._kills_done += 1
                if budget is not None:
                    budget -= 1
                if self.jobs.get(job.id) is job:
                    self._finish(job, logged=True)
                while self._kill_waits and self._kill_waits[0][0] <= self._kills_done:
                    self._kill_waits.popleft()[1].callback(None)
        finally:
            self._finishing = False
        if self._to_finish and not self._stopping:
            self._kill_call = self.reactor.callLater(0, self._finish_killed)

    def stopService(self) -> Deferred[None]:
        """
        Kill every running job (SIGTERM, then SIGKILL after the grace);
        fires once every one of their processes is gone.  They finish as
        ``interrupted`` (not ``killed``: no user asked).  With a store,
        pending jobs stay recorded for the next start, and the store is
        closed once every write is done.
        """
        super().stopService()
        self._stopping = True
        if self._start_retry is not None and self._start_retry.active():
            self._start_retry.cancel()
        self._start_retry = None
        if self._start_call is not None and self._start_call.active():
            self._start_call.cancel()
        self._start_call = None
        self.trimmer.stop()
        self._drain_starts()  # none starts now: those waiting are pending again
        self._finish_killed(None)  # pending jobs killed before the stop are recorded as killed
        running = [job for job in self.jobs.values() if job.state != PENDING and job.state != FINISHED]
        self._interrupting.update(job.id for job in running if not self._stopped_early(job))
        if running:
            log.info("stopping: killing {count} running jobs", count=len(running))
            d = self.kill([job.id for job in running], "shutdown").addCallback(lambda _: None)
        else:
            d = succeed(None)
        # Then whatever orphans of jobs no job claimed (a subreaper server's).
        d.addCallback(lambda _: stop_orphans(self.processes, self.kill_grace))
        if self.store is None:
            return d
        store = self.store
        return d.addCallback(lambda _: self._writes_done()).addCallback(lambda _: store.close())

    # The store.

    @property
    def stopping(self) -> bool:
        """True once the server has begun to stop."""
        return self._stopping

    @property
    def recovered(self) -> bool:
        """False while the jobs of the store are being taken up after a start."""
        return self._recovered

    def when_recovered(self) -> Deferred[None]:
        """
        Fires once the jobs of the store have been taken up (at once without
        a store): before that, the job table and the history are incomplete.
        """
        if self._recovered:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._recovery_waiters.append(waiter)
        return waiter

    def startService(self) -> None:
        """With a store: open it and take up the jobs it holds (see ``_recover``)."""
        super().startService()
        if self.store is not None and not self._recovered:
            d = self._track(self.store.open().addCallbacks(self._recover, self._store_failed))
            d.addErrback(lambda f: log.failure("bug while taking up the jobs of the store", f))

    def _recover(self, opened: Opened) -> None:
        """
        Jobs that were pending are queued again, in their original order;
        jobs that were running when the server died are not run again (half
        a ``pkg install`` must not be repeated blindly): they finish now as
        ``interrupted``.
        """
        if opened.moved_aside:
            log.critical("the job store {path} was corrupt or unreadable: moved it to {moved} and started an "
                         "empty one; queued jobs and history in it are not used", path=self.store and self.store.path,
                         moved=opened.moved_aside)
        now = self.reactor.seconds()
        requeued = 0
        for stored in opened.jobs:
            job = Job(stored.spec, self.log_cap_bytes, stored.time_queued)
            if stored.time_started is not None:
                job.start(stored.time_started)
                log.warn("job {job_id} was running when the server stopped without finishing it: "
                         "recorded as interrupted, not run again", job_id=job.id)
            elif job.queue not in self.queues:
                log.warn("job {job_id} was pending in queue {queue}, which no longer exists: recorded as "
                         "interrupted", job_id=job.id, queue=job.queue)
            else:
                self.jobs[job.id] = job
                self.queues[job.queue].add(job)
                self._publish(job)
                self._tell(job, "recovered")
                requeued += 1
                continue
            job.interrupted = True
            job.finish(now)
            record = job.record()
            self._record_finished(job, record)
            self._tell(job, "recovered")
            self.events.publish("dispatcher", record)
        if opened.jobs:
            log.info("job store: {count} pending jobs queued again", count=requeued)
        self._recovered = True
        waiters, self._recovery_waiters = self._recovery_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._start_ready()

    def _store_failed(self, f: Failure) -> None:
        log.critical("the job store cannot be used; run requests will be refused: {error}",
                     error=f.getErrorMessage())
        self._recovered = True
        waiters, self._recovery_waiters = self._recovery_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _record_finished(self, job: Job, record: dict[str, Any]) -> None:
        if self.store is not None:
            assert job.time_finished is not None
            d = self.store.finish(record, job.time_finished)
            self._track(d).addErrback(self._log_store_error, job.id)

    def _log_store_error(self, f: Failure, job_id: str) -> None:
        log.error("the store could not record the state of job {job_id}: {error}", job_id=job_id,
                  error=f.getErrorMessage())

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        """Count ``d`` among the store writes that stopping waits for."""
        self._writes += 1
        return d.addBoth(self._settled)

    def _settled(self, result: Any) -> Any:
        self._writes -= 1
        if not self._writes:
            waiters, self._writes_waiters = self._writes_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result

    def _writes_done(self) -> Deferred[None]:
        if not self._writes:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._writes_waiters.append(waiter)
        return waiter

    def read_history(self, start: float, end: float, limit: int) -> Deferred[HistoryPage]:
        """Finished records in ``[start, end]``, newest first, at most ``limit``, and whether more matched."""
        store = self._history_store()
        if self._recovered:
            return store.history(start, end, limit).addErrback(_unavailable)
        d = self.when_recovered().addCallback(lambda _: store.history(start, end, limit))
        return d.addErrback(_unavailable)

    def last_record(self, job_id: str) -> Deferred[dict[str, Any] | None]:
        """The live record of ``job_id`` if it is pending or running, else its latest finished one, or None."""
        job = self.jobs.get(job_id)
        if job is not None:
            return succeed(job.live_record())
        store = self._history_store()
        if self._recovered:
            return store.latest(job_id).addErrback(_unavailable)
        return self.when_recovered().addCallback(lambda _: store.latest(job_id)).addErrback(_unavailable)

    def _history_store(self) -> Store:
        if self.store is None:
            raise Unavailable("this server keeps no job history (it runs without a store)")
        return self.store


def _unavailable(f: Failure) -> Failure:
    if f.check(StoreError):
        return Failure(Unavailable(f.getErrorMessage()))
    return f
