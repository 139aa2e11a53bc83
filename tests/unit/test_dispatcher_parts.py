"""
The dispatcher facade over its parts, with a Clock and a runner that runs
nothing: who decides how a job ended, what a kill request looks like while
the job winds down, and live updates and pending kills on their own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fakes import FakeRunner, FakeStore
from twisted.internet.task import Clock

from sysadm_dispatch.core.dispatcher import Dispatcher
from sysadm_dispatch.core.events import EventHub
from sysadm_dispatch.core.job import Job
from sysadm_dispatch.core.kills import KILLS_PER_TURN, PendingKills
from sysadm_dispatch.core.live import LiveUpdates
from sysadm_dispatch.core.spec import JobSpec
from sysadm_dispatch.process.result import RunResult


def make(**kwargs: Any) -> tuple[Clock, Dispatcher, list[dict[str, Any]]]:
    clock = Clock()
    FakeRunner.made.clear()
    dispatcher = Dispatcher(clock, runner_factory=FakeRunner, environ={}, **kwargs)
    events: list[dict[str, Any]] = []
    dispatcher.events.subscribe("dispatcher", lambda e: events.append(e.args))
    return clock, dispatcher, events


def submit(dispatcher: Dispatcher, *ids: str) -> list[FakeRunner]:
    dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [{"id": i, "commands": "cmd"} for i in ids]}))
    return FakeRunner.made[-len(ids):]


def finished(events: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    [record] = [e for e in events if e["process_id"] == job_id and e["state"] == "finished"]
    return record


def test_a_run_that_ends_by_itself_succeeds_or_fails_by_its_exit_codes() -> None:
    clock, dispatcher, events = make()
    ok, bad = submit(dispatcher, "ok", "bad")
    ok.end(0)
    bad.end(2)
    assert finished(events, "ok")["success"] == "true"
    record = finished(events, "bad")
    assert (record["success"], record["killed"], record["timed_out"]) == ("false", False, False)
    assert dispatcher.jobs == {}


def test_a_killed_job_shows_the_request_while_it_winds_down_then_ends_killed() -> None:
    clock, dispatcher, events = make()
    [runner] = submit(dispatcher, "j")
    runner.end = lambda code, result=RunResult(): None  # type: ignore[method-assign]  # winds down slowly
    dispatcher.kill(["j"], "alice")
    live = dispatcher.jobs["j"].record()
    assert (live["state"], live["killed"], live["killed_by"], live["success"]) == ("running", True, "alice", None)
    dispatcher.kill(["j"], "bob")
    assert runner.kills == 2 and dispatcher.jobs["j"].killed_by == "alice"
    runner.done.callback(RunResult("killed", "SIGKILL", escalated=True))
    record = finished(events, "j")
    assert (record["killed"], record["killed_by"], record["signal"], record["escalated"]) == (
        True, "alice", "SIGKILL", True)


def test_a_timed_out_run_ends_timed_out_by_the_timeout() -> None:
    clock, dispatcher, events = make()
    [runner] = submit(dispatcher, "j")
    runner.kill(timed_out=True)
    record = finished(events, "j")
    assert (record["timed_out"], record["killed"], record["killed_by"]) == (True, False, "timeout")


def test_a_stop_interrupts_running_jobs_but_a_user_kill_before_it_stands() -> None:
    clock, dispatcher, events = make()
    slow, other = submit(dispatcher, "slow", "other")
    slow.kill = lambda timed_out=False: None  # type: ignore[method-assign]  # still winding down at the stop
    dispatcher.kill(["slow"], "alice")
    stopped: list[object] = []
    dispatcher.stopService().addCallback(stopped.append)
    slow.end(143, RunResult("killed", "SIGTERM"))
    assert stopped == [None]
    assert (finished(events, "other")["interrupted"], finished(events, "other")["killed_by"]) == (True, "shutdown")
    assert (finished(events, "slow")["killed"], finished(events, "slow")["interrupted"]) == (True, False)


def test_killed_pending_jobs_end_killed_without_running() -> None:
    clock, dispatcher, events = make(queues={"one": 1})
    dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [
        {"id": "first", "commands": "cmd", "queue": "one"}, {"id": "second", "commands": "cmd", "queue": "one"}]}))
    done: list[Any] = []
    dispatcher.kill(["second"], "alice").addCallback(done.append)
    assert done == [(["second"], [])]
    record = finished(events, "second")
    assert (record["killed"], record["killed_by"], record["success"]) == (True, "alice", "false")
    assert [r.job.id for r in FakeRunner.made] == ["first"]


def test_recovered_jobs_that_were_running_end_interrupted() -> None:
    from sysadm_dispatch.store.records import Opened, StoredJob

    spec = JobSpec("was-running", ("cmd",), (("cmd",),))
    store = FakeStore(Opened([StoredJob(dataclasses.asdict(spec), 1.0, 2.0)], None))
    clock, dispatcher, events = make(store=store)
    dispatcher.startService()
    record = finished(events, "was-running")
    assert (record["interrupted"], record["killed"], record["success"]) == (True, False, "false")
    assert store.finished == [record]


def test_live_updates_are_coalesced_per_turn_and_held_for_the_interval() -> None:
    clock = Clock()
    hub = EventHub(clock)
    seen: list[tuple[float, str]] = []
    hub.subscribe("dispatcher", lambda e: seen.append((clock.seconds(), e.args["process_details"].get("cmd", ""))))
    live = LiveUpdates(clock, hub, interval=1.0)
    job = Job(JobSpec("j", ("cmd",), (("cmd",),)), 1 << 10, 0.0)
    job.start(0.0)
    log = job.begin_command()
    for data in (b"a", b"b"):
        log.write(data)
        live.output(job, 0, data)
    clock.advance(0)
    assert seen == [(0.0, "ab")]
    log.write(b"c")
    live.output(job, 0, b"c")
    clock.advance(0.5)
    assert len(seen) == 1
    clock.advance(0.5)
    assert seen[-1] == (1.0, "c")
    log.write(b"d")
    live.output(job, 0, b"d")
    live.forget(job)  # it finished meanwhile
    clock.advance(5)
    assert len(seen) == 2 and clock.getDelayedCalls() == []


def test_pending_kills_finish_a_slice_per_turn_and_fire_each_request_when_its_jobs_are_done() -> None:
    clock = Clock()
    finished_ids: list[str] = []
    kills = PendingKills(clock, lambda job: finished_ids.append(job.id))
    jobs = [Job(JobSpec(f"j{i}", ("cmd",), (("cmd",),)), 1 << 10, 0.0) for i in range(KILLS_PER_TURN + 3)]
    fired: list[str] = []
    kills.add(jobs[:-1]).addCallback(lambda _: fired.append("first"))
    assert len(finished_ids) == KILLS_PER_TURN and fired == []
    clock.advance(0)
    assert finished_ids == [j.id for j in jobs[:-1]] and fired == ["first"]
    kills.add(jobs[-1:]).addCallback(lambda _: fired.append("second"))
    assert finished_ids == [j.id for j in jobs] and fired == ["first", "second"]
    assert clock.getDelayedCalls() == []
