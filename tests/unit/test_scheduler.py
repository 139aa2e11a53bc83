"""
The scheduler alone, driven by a Clock: the job table and queues, start
pacing (``STARTS_PER_TURN`` per reactor turn), queue limits, and with a
store, starts only once recorded.
"""

from __future__ import annotations

import pytest
from fakes import FakeStore
from twisted.internet.task import Clock

from sysadm_dispatch.core import scheduler as scheduler_module
from sysadm_dispatch.core.job import RUNNING, Job
from sysadm_dispatch.core.journal import Journal, Unavailable
from sysadm_dispatch.core.scheduler import STARTS_PER_TURN, Scheduler
from sysadm_dispatch.core.spec import InvalidJob, JobSpec
from sysadm_dispatch.store.records import Opened


def job(job_id: str, queue: str = "no_queue") -> Job:
    return Job(JobSpec(job_id, ("true",), (("true",),), queue), 1 << 10, 0.0)


class Started:
    """The scheduler's ``launch``: records which jobs it started, and starts them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ids: list[str] = []

    def __call__(self, job: Job) -> None:
        job.start(self.clock.seconds())
        self.ids.append(job.id)


def make(store: FakeStore | None = None) -> tuple[Clock, Scheduler, Started]:
    clock = Clock()
    started = Started(clock)
    journal = Journal(store)  # type: ignore[arg-type]
    if store is not None:
        journal.open((), 1 << 10, lambda requeued, lost: None)
    return clock, Scheduler(clock, {"one": 1}, journal, started), started


def accept(scheduler: Scheduler, *jobs: Job) -> None:
    for j in jobs:
        scheduler.add(j)
    scheduler.accepted(jobs)


def test_a_big_batch_starts_a_slice_per_reactor_turn() -> None:
    clock, scheduler, started = make()
    jobs = [job(f"j{i:03d}") for i in range(STARTS_PER_TURN * 2 + 3)]
    accept(scheduler, *jobs)
    assert started.ids == [j.id for j in jobs[:STARTS_PER_TURN]]
    assert len(clock.getDelayedCalls()) == 1, "the rest on the next turn"
    clock.advance(0)
    assert started.ids == [j.id for j in jobs]
    assert clock.getDelayedCalls() == []


def test_a_queue_with_a_limit_starts_one_at_a_time_in_order() -> None:
    clock, scheduler, started = make()
    a, b = job("a", "one"), job("b", "one")
    accept(scheduler, a, b)
    assert started.ids == ["a"] and b.state != RUNNING
    assert scheduler.listing() == {"one": {"a": a.list_entry("0"), "b": b.list_entry("1")}}
    scheduler.remove(a)  # a finished
    scheduler.start_ready()
    assert started.ids == ["a", "b"] and scheduler.jobs == {"b": b}


def test_a_withdrawn_job_never_starts() -> None:
    clock, scheduler, started = make()
    a, b = job("a", "one"), job("b", "one")
    accept(scheduler, a, b)
    b.request_kill("alice")
    scheduler.withdraw(b)
    scheduler.remove(a)
    scheduler.start_ready()
    assert started.ids == ["a"] and "b" in scheduler.jobs and scheduler.listing() == {}


def test_check_refuses_taken_ids_unknown_queues_too_many_and_when_stopping() -> None:
    clock, scheduler, started = make()
    accept(scheduler, job("a", "one"), job("b", "one"))
    with pytest.raises(InvalidJob, match="already running"):
        scheduler.check([job("a").spec], 10)
    with pytest.raises(InvalidJob, match="unknown queue"):
        scheduler.check([job("x", "nope").spec], 10)
    with pytest.raises(Unavailable, match=r"1 pending jobs \(limit 1\)"):
        scheduler.check([job("c").spec], 1)
    scheduler.stop()
    with pytest.raises(Unavailable, match="shutting down"):
        scheduler.check([job("c").spec], 10)


def test_with_a_store_a_job_starts_only_once_its_start_is_recorded() -> None:
    store = FakeStore()
    clock, scheduler, started = make(store)
    store.hold = True
    accept(scheduler, job("a"))
    assert store.started == ["a"] and started.ids == []
    store.settle()
    assert started.ids == ["a"]


def test_a_start_the_store_cannot_record_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    clock, scheduler, started = make(store)
    store.broken = True
    accept(scheduler, job("a"))
    assert started.ids == [] and store.started == ["a"]
    store.broken = False
    clock.advance(scheduler_module.START_RETRY_SECONDS)
    assert started.ids == ["a"] and store.started == ["a", "a"]


def test_jobs_recorded_as_starting_are_pending_again_when_the_server_stops() -> None:
    store = FakeStore()
    clock, scheduler, started = make(store)
    store.hold = True
    accept(scheduler, job("a"))
    scheduler.stop()
    store.settle()
    assert started.ids == [] and store.pending_again == ["a"]


def test_reserve_promises_a_start_only_where_the_queue_has_room_and_nobody_waits() -> None:
    store = FakeStore(Opened([], None))
    clock, scheduler, started = make(store)
    first = [job("a", "one"), job("b", "one"), job("c")]
    assert scheduler.reserve(first) == {"a", "c"}
    # While those are being recorded: the queue's room is taken by "a", and "b" waits.
    assert scheduler.reserve([job("d", "one"), job("e")]) == {"e"}
    with pytest.raises(InvalidJob, match="already being queued"):
        scheduler.check([job("b").spec], 10)
    scheduler.release(first, {"a", "c"})
    assert set(scheduler.reserved) == {"d", "e"}
