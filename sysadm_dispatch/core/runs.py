"""
A job's run and its end: the runner of each running job, and the one place
where a job finishes, its outcome decided once (``outcome.decide``) and told
to the store, the observers, the event subscribers and whoever waits for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..process.result import RunResult
from .events import EventHub
from .job import EXIT_NOT_STARTED, Job
from .journal import Journal
from .live import LiveUpdates
from .memory import Trimmer
from .outcome import Outcome, decide

log = Logger()


class Runner(Protocol):
    """What the dispatcher needs of the runner of one job (``process.runner.JobRunner``)."""

    def start(self) -> Deferred[RunResult]: ...

    def kill(self) -> None: ...


#: ``runner_factory(reactor, job, environ=..., kill_grace=..., processes=..., on_output=...)``.
RunnerFactory = Callable[..., Runner]


class Runs:
    """
    Starts each job's runner (``start``) and finishes jobs (``finish``):
    running ones when their runner is done, pending ones when killed,
    recovered ones that cannot run again.  ``ended(job)`` is called after
    a run is over, so that the next jobs may start.
    """

    def __init__(self, reactor: IReactorTime, *, journal: Journal, events: EventHub, live: LiveUpdates,
                 runner_factory: RunnerFactory, processes: object, environ: Mapping[str, str], kill_grace: float,
                 job_timeout: float, remove: Callable[[Job], None], ended: Callable[[Job], None]) -> None:
        self.reactor = reactor
        self.journal = journal
        self.events = events
        self.live = live
        self.runner_factory = runner_factory
        #: What starts and tracks processes, handed to each runner.
        self.processes = processes
        self.environ = environ
        self.kill_grace = kill_grace
        self.job_timeout = job_timeout
        self.remove = remove
        self.ended = ended
        #: The runner of each running job, by id.
        self.runners: dict[str, Runner] = {}
        self.waiters: dict[str, list[Deferred[dict[str, Any]]]] = {}
        #: ``observe(job, change)`` for each job submitted, started, finished
        #: or recovered from the store (the metrics count with these).
        self.observers: list[Callable[[Job, str], None]] = []
        #: Gives memory back after the output of finished jobs is let go.
        self.trimmer = Trimmer(reactor)

    def start(self, job: Job) -> None:
        """The job starts now."""
        job.start(self.reactor.seconds())
        if job.timeout is None and self.job_timeout:
            job.timeout = self.job_timeout
        self.publish(job)
        self.tell(job, "started")
        try:
            runner = self.runner_factory(self.reactor, job, environ=self.environ, kill_grace=self.kill_grace,
                                         processes=self.processes, on_output=self.live.output,
                                         on_timeout=self.timed_out)
            self.runners[job.id] = runner
            done = runner.start()
        except Exception as e:
            # A bug, or something unforeseen: the job ends as one that could not start.
            log.failure("bug while starting job {job_id}", job_id=job.id)
            self.runners.pop(job.id, None)
            if len(job.logs) == len(job.return_codes):
                job.begin_command()
            job.logs[-1].write(f"sysadm-dispatch: cannot run command: internal error ({type(e).__name__}); "
                               "the server log has the details\n".encode())
            job.end_command(EXIT_NOT_STARTED)
            self._run_over(None, job)
            return
        done.addCallback(self._run_over, job)

    def timed_out(self, job: Job) -> None:
        """The job's timeout ran out: it shows ``timed_out`` (by ``timeout``) while its processes end."""
        job.request_kill("timeout", timeout=True)

    def _run_over(self, result: RunResult | None, job: Job) -> None:
        self.runners.pop(job.id, None)
        self.finish(job, result)
        self.ended(job)

    def finish(self, job: Job, result: RunResult | None, *, logged: bool = False) -> None:
        """
        The job is over (``result``: how its run ended; None if it never
        ran): its outcome is decided here, once, and told.
        """
        outcome = decide(len(job.spec.commands), job.return_codes, result, job.kill_request)
        self.live.forget(job)
        if result is None:
            job.finish(self.reactor.seconds(), outcome)
        else:
            job.finish(self.reactor.seconds(), outcome, signal=result.signal, escalated=result.escalated)
        self.remove(job)
        # The requester's line (rpc) says who ran what; the history keeps every
        # outcome.  The log adds a line only for a job that did not succeed:
        # a line per job more was a tenth of a busy server's time.
        if outcome is not Outcome.SUCCEEDED and not logged:
            log.info(
                "job {job_id} did not succeed: killed={killed} timed_out={timed_out} interrupted={interrupted} "
                "return_codes={codes}",
                job_id=job.id, killed=job.killed, timed_out=job.timed_out, interrupted=job.interrupted,
                codes=job.return_codes,
            )
        self.told_finished(job, "finished")
        self.trimmer.released(sum(min(log.total, log.cap) for log in job.logs))

    def told_finished(self, job: Job, change: str) -> None:
        """A finished job's record goes to the store, the observers, the subscribers and the waiters."""
        record = job.record()
        self.journal.finished(job, record)
        self.tell(job, change)
        self.events.publish("dispatcher", record)
        for d in self.waiters.pop(job.id, []):
            d.callback(record)

    def wait(self, job_id: str) -> Deferred[dict[str, Any]]:
        """Fires with the finished record of ``job_id`` when it finishes."""
        d: Deferred[dict[str, Any]] = Deferred()
        self.waiters.setdefault(job_id, []).append(d)
        return d

    def forget_wait(self, job_id: str, d: Deferred[dict[str, Any]]) -> None:
        waiters = self.waiters.get(job_id, [])
        if d in waiters:
            waiters.remove(d)
            if not waiters:
                del self.waiters[job_id]

    def tell(self, job: Job, change: str) -> None:
        for observe in self.observers:
            observe(job, change)

    def publish(self, job: Job) -> None:
        if self.events.subscriber_count("dispatcher"):  # a record costs more than the check
            self.events.publish("dispatcher", job.record())
