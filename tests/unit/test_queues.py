"""
Unit tests for ``sysadm_dispatch.core.queues``: what starts next, and how the
positions of a queue's jobs are renumbered as jobs come and go.
"""

from __future__ import annotations

import pytest

from sysadm_dispatch.core.job import FINISHED, Job, positions
from sysadm_dispatch.core.outcome import Outcome
from sysadm_dispatch.core.queues import Queue
from sysadm_dispatch.core.spec import JobSpec

T0 = 1454420713.0


def job(job_id: str, queue: str = "q") -> Job:
    return Job(JobSpec(job_id, ("true",), (("true",),), queue), log_cap=1024, now=T0)


def fill(queue: Queue, *ids: str) -> list[Job]:
    jobs = [job(i, queue.name) for i in ids]
    for j in jobs:
        queue.add(j)
    return jobs


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


def numbering(queue: Queue) -> list[tuple[str, str | None]]:
    """What ``list`` shows for a queue: each job with its position, in order."""
    return [(j.id, p) for j, p in positions(list(queue), queue.numbered)]


def start_all(queue: Queue) -> list[str]:
    started = queue.startable()
    for j in started:
        j.start(T0)
        queue.started(j)
    return ids(started)


def finish(queue: Queue, j: Job) -> None:
    j.finish(T0, Outcome.SUCCEEDED)
    queue.remove(j)


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="'q'"):
        Queue("q", -1)


def test_empty_queue() -> None:
    for limit in (0, 1, 3):
        queue = Queue("q", limit)
        assert len(queue) == 0 and queue.startable() == [] and list(queue) == []


def test_limit_zero_starts_everything_in_order() -> None:
    queue = Queue("no_queue", 0)
    fill(queue, "a", "b", "c")
    assert not queue.numbered
    assert ids(queue.startable()) == ["a", "b", "c"]
    assert start_all(queue) == ["a", "b", "c"]
    assert queue.running_count() == 3
    assert queue.startable() == []
    fill(queue, "d")
    assert ids(queue.startable()) == ["d"], "no limit: a new job starts even with others running"
    assert numbering(queue) == [("a", None), ("b", None), ("c", None), ("d", None)]


def test_limit_one_runs_one_at_a_time_in_order() -> None:
    queue = Queue("pkg_queue", 1)
    a, b, c = fill(queue, "a", "b", "c")
    assert queue.numbered
    assert ids(queue.startable()) == ["a"]
    assert numbering(queue) == [("a", "1"), ("b", "2"), ("c", "3")]
    assert start_all(queue) == ["a"]
    assert queue.startable() == [], "one is running: nothing else may start"
    assert numbering(queue) == [("a", "0"), ("b", "1"), ("c", "2")]
    finish(queue, a)
    assert numbering(queue) == [("b", "1"), ("c", "2")]
    assert start_all(queue) == ["b"]
    assert numbering(queue) == [("b", "0"), ("c", "1")]
    finish(queue, b)
    assert start_all(queue) == ["c"]
    finish(queue, c)
    assert len(queue) == 0 and numbering(queue) == []


def test_limit_n() -> None:
    queue = Queue("q", 2)
    a, b, c, d, e = fill(queue, "a", "b", "c", "d", "e")
    assert start_all(queue) == ["a", "b"]
    assert queue.running_count() == 2 and queue.startable() == []
    assert numbering(queue) == [("a", "0"), ("b", "0"), ("c", "1"), ("d", "2"), ("e", "3")]
    finish(queue, a)
    assert ids(queue.startable()) == ["c"], "one slot is free: only the next job may start"
    assert start_all(queue) == ["c"]
    assert numbering(queue) == [("b", "0"), ("c", "0"), ("d", "1"), ("e", "2")]
    finish(queue, b)
    finish(queue, c)
    assert start_all(queue) == ["d", "e"]


def test_removing_a_pending_job_renumbers() -> None:
    queue = Queue("pkg_queue", 1)
    a, b, c, d = fill(queue, "a", "b", "c", "d")
    start_all(queue)
    # Killing a pending job: it leaves the queue and never starts.
    c.finish(T0, Outcome.KILLED)
    queue.remove(c)
    assert numbering(queue) == [("a", "0"), ("b", "1"), ("d", "2")]
    finish(queue, a)
    assert start_all(queue) == ["b"]
    assert numbering(queue) == [("b", "0"), ("d", "1")]


def test_running_jobs_come_first_whatever_their_insertion_order() -> None:
    queue = Queue("q", 2)
    a, b, c = fill(queue, "a", "b", "c")
    start_all(queue)
    finish(queue, a)
    fill(queue, "d")
    start_all(queue)  # c starts, after b and before d
    assert numbering(queue) == [("b", "0"), ("c", "0"), ("d", "1")]
    assert ids(list(queue)) == ["b", "c", "d"]


def test_iteration_lists_running_jobs_before_pending_ones() -> None:
    # However a running job came to be behind a pending one in the table
    # (e.g. a limit raised at restart), ``list`` must show it as "0" first.
    queue = Queue("q", 2)
    a, b, c = fill(queue, "a", "b", "c")
    c.start(T0)
    queue.started(c)
    assert ids(list(queue)) == ["c", "a", "b"]
    assert numbering(queue) == [("c", "0"), ("a", "1"), ("b", "2")]
    assert ids(queue.startable()) == ["a"]


def test_a_job_added_later_waits_its_turn() -> None:
    queue = Queue("pkg_queue", 1)
    a, b = fill(queue, "a", "b")
    start_all(queue)
    fill(queue, "c")
    finish(queue, a)
    assert ids(queue.startable()) == ["b"]


def test_remove_unknown_job_is_harmless() -> None:
    queue = Queue("q", 1)
    fill(queue, "a")
    queue.remove(job("zzz"))
    assert ids(list(queue)) == ["a"]


def test_add_and_remove_track_length() -> None:
    queue = Queue("q", 1)
    a, b = fill(queue, "a", "b")
    assert len(queue) == 2
    queue.remove(a)
    assert len(queue) == 1 and ids(list(queue)) == ["b"]
    assert b.state != FINISHED


def test_a_long_queue_costs_no_more_per_start_than_a_short_one() -> None:
    # What may start is found without walking the pending jobs: the queue
    # keeps running and pending jobs apart (a scan of each would show here
    # as thousands of reads of job states).
    queue = Queue("pkg_queue", 1)
    jobs = fill(queue, *(f"j{i}" for i in range(5000)))
    reads = 0

    class Counting(Job):
        @property
        def state(self) -> str:
            nonlocal reads
            reads += 1
            return self.__dict__["state"]

        @state.setter
        def state(self, value: str) -> None:
            self.__dict__["state"] = value

    for j in jobs:
        j.__class__ = Counting
        j.__dict__["state"] = "pending"
    assert start_all(queue) == ["j0"]
    assert queue.startable() == [] and queue.pending_count() == 4999 and queue.running_count() == 1
    assert reads < 10
