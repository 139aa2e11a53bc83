"""
The journal alone, over a store in memory: taking up the store's jobs at a
start, waiting for every write before closing, and store failures turned
into ``Unavailable`` for clients.
"""

from __future__ import annotations

import dataclasses

import pytest
from fakes import FakeStore
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from sysadm_dispatch.core.job import RUNNING, Job
from sysadm_dispatch.core.journal import Journal, Unavailable
from sysadm_dispatch.core.outcome import Outcome
from sysadm_dispatch.core.spec import JobSpec
from sysadm_dispatch.store.records import Opened, StoredJob


def spec(job_id: str, queue: str = "no_queue") -> JobSpec:
    return JobSpec(job_id, ("true",), (("true",),), queue)


def failure_of(d: Deferred[object]) -> Failure:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    [f] = failures
    return f


def test_without_a_store_it_is_recovered_and_keeps_no_history() -> None:
    journal = Journal(None)
    fired: list[object] = []
    journal.when_recovered().addCallback(fired.append)
    assert journal.recovered and fired == [None] and not journal.durable
    with pytest.raises(Unavailable, match="no job history"):
        journal.history(0, 1, 10)
    closed: list[object] = []
    journal.close().addCallback(closed.append)
    assert closed == [None]


def test_taking_up_the_store_requeues_pending_jobs_and_gives_up_the_others() -> None:
    store = FakeStore(Opened([
        StoredJob(dataclasses.asdict(spec("was-running")), 1.0, 2.0),
        StoredJob(dataclasses.asdict(spec("pending-1")), 3.0, None),
        StoredJob(dataclasses.asdict(spec("queue-gone", "old_queue")), 4.0, None),
        StoredJob(dataclasses.asdict(spec("pending-2")), 5.0, None),
    ], None))
    journal = Journal(store)  # type: ignore[arg-type]
    order: list[str] = []
    journal.when_recovered().addCallback(lambda _: order.append("recovered"))
    taken: list[tuple[list[Job], list[Job]]] = []

    def take_up(requeued: list[Job], lost: list[Job]) -> None:
        assert not journal.recovered, "before anyone waiting for the recovery is told"
        order.append("taken up")
        taken.append((requeued, lost))

    journal.open(["no_queue"], 1 << 10, take_up)
    [(requeued, lost)] = taken
    assert [j.id for j in requeued] == ["pending-1", "pending-2"]
    assert [j.time_queued for j in requeued] == [3.0, 5.0]
    assert [j.id for j in lost] == ["was-running", "queue-gone"]
    assert lost[0].state == RUNNING and lost[0].time_started == 2.0
    assert order == ["taken up", "recovered"] and journal.recovered


def test_a_store_that_cannot_open_leaves_it_recovered_without_jobs() -> None:
    store = FakeStore()
    journal = Journal(store)  # type: ignore[arg-type]
    d: Deferred[Opened] = Deferred()
    store.open = lambda: d  # type: ignore[method-assign]
    journal.open(["no_queue"], 1 << 10, lambda requeued, lost: pytest.fail("nothing to take up"))
    assert not journal.recovered
    from sysadm_dispatch.store.records import StoreError

    d.errback(StoreError("unreadable"))
    assert journal.recovered


def test_close_waits_for_every_write_and_what_follows_it() -> None:
    store = FakeStore()
    journal = Journal(store)  # type: ignore[arg-type]
    store.hold = True
    job = Job(spec("a"), 1 << 10, 0.0)
    job.start(1.0)
    job.finish(2.0, Outcome.SUCCEEDED)
    journal.finished(job, job.record())
    followed: list[str] = []
    journal.track(journal.mark_started("b", 1.0).addCallback(lambda _: followed.append("b started")))
    closed: list[object] = []
    journal.close().addCallback(closed.append)
    assert closed == [] and not store.closed
    store.settle()
    assert followed == ["b started"] and store.closed and closed == [None]
    assert [r["process_id"] for r in store.finished] == ["a"]


def test_new_jobs_the_store_cannot_record_are_refused_as_unavailable() -> None:
    store = FakeStore()
    journal = Journal(store)  # type: ignore[arg-type]
    store.broken = True
    f = failure_of(journal.add([(spec("a"), 1.0, None)]))
    assert f.check(Unavailable) and "disk is full; no job of this request was queued" in f.getErrorMessage()


def test_history_reads_map_store_errors_to_unavailable_and_wait_for_the_recovery() -> None:
    store = FakeStore()
    journal = Journal(store)  # type: ignore[arg-type]
    pages: list[object] = []
    journal.history(0, 10, 5).addCallback(pages.append)
    assert pages == [] and store.history_asked == [], "not before the store's jobs are taken up"
    journal.open([], 1 << 10, lambda requeued, lost: None)
    assert pages == [([], False)] and store.history_asked == [(0, 10, 5)]
    store.broken = True
    f = failure_of(journal.history(0, 10, 5))
    assert f.check(Unavailable) and f.getErrorMessage() == "disk is full"
