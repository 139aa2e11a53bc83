"""
How a job ended: one ``Outcome``, decided once when it finishes, and the
wire fields (``success``, ``killed``, ``timed_out``, ``interrupted``,
``killed_by``, ``signal``, ``escalated``) derived from it.
"""

from __future__ import annotations

import pytest

from sysadm_dispatch.core.job import Job
from sysadm_dispatch.core.outcome import KillRequest, Outcome, decide
from sysadm_dispatch.core.spec import JobSpec
from sysadm_dispatch.process.result import RunResult

USER = KillRequest("alice")
SHUTDOWN = KillRequest("shutdown", shutdown=True)


def make_job(commands: tuple[str, ...] = ("a", "b")) -> Job:
    return Job(JobSpec("j", commands, tuple((c,) for c in commands)), 1 << 10, 0.0)


def running(codes: list[int], commands: tuple[str, ...] = ("a", "b")) -> Job:
    job = make_job(commands)
    job.start(1.0)
    for code in codes:
        job.begin_command()
        job.end_command(code)
    return job


@pytest.mark.parametrize(
    ("codes", "result", "request_", "outcome"),
    [
        ([0, 0], RunResult(), None, Outcome.SUCCEEDED),
        ([0, 1], RunResult(), None, Outcome.FAILED),
        ([0], RunResult(), None, Outcome.FAILED),  # the chain stopped early
        ([143], RunResult("killed", "SIGTERM"), USER, Outcome.KILLED),
        ([0, 0], RunResult("killed"), USER, Outcome.KILLED),  # killed while its output was drained
        ([143], RunResult("killed", "SIGTERM"), SHUTDOWN, Outcome.INTERRUPTED),
        ([143], RunResult("timed_out", "SIGTERM"), None, Outcome.TIMED_OUT),
        # A kill asked after the timeout fired: the timeout came first and stands.
        ([143], RunResult("timed_out", "SIGTERM"), USER, Outcome.TIMED_OUT),
        ([143], RunResult("timed_out", "SIGTERM"), SHUTDOWN, Outcome.TIMED_OUT),
        ([], None, USER, Outcome.KILLED),  # a pending job killed: it never ran
        ([127], None, None, Outcome.FAILED),  # it could not start
    ],
)
def test_decide(codes: list[int], result: RunResult | None, request_: KillRequest | None, outcome: Outcome) -> None:
    assert decide(2, codes, result, request_) is outcome


@pytest.mark.parametrize(
    ("outcome", "fields"),
    [
        (Outcome.SUCCEEDED, ("true", False, False, False)),
        (Outcome.FAILED, ("false", False, False, False)),
        (Outcome.KILLED, ("false", True, False, False)),
        (Outcome.TIMED_OUT, ("false", False, True, False)),
        (Outcome.INTERRUPTED, ("false", False, False, True)),
    ],
)
def test_wire_fields_derive_from_the_outcome(outcome: Outcome, fields: tuple[str, bool, bool, bool]) -> None:
    job = running([0, 0])
    job.finish(2.0, outcome)
    record = job.record()
    assert (record["success"], record["killed"], record["timed_out"], record["interrupted"]) == fields
    assert job.outcome is outcome


def test_the_outcome_is_set_once() -> None:
    job = running([0, 0])
    job.finish(2.0, Outcome.SUCCEEDED)
    with pytest.raises(RuntimeError, match="already finished"):
        job.finish(3.0, Outcome.KILLED)
    assert job.outcome is Outcome.SUCCEEDED and job.time_finished == 2.0


def test_a_kill_request_shows_while_the_job_winds_down_and_the_first_one_stays() -> None:
    job = running([])
    assert job.request_kill("alice")
    assert not job.request_kill("bob"), "a later request changes nothing"
    record = job.record()
    assert (record["state"], record["killed"], record["killed_by"], record["success"]) == ("running", True, "alice", None)
    assert job.outcome is None
    job.finish(2.0, Outcome.KILLED, signal="SIGTERM", escalated=True)
    record = job.record()
    assert (record["killed"], record["killed_by"], record["signal"], record["escalated"]) == (True, "alice", "SIGTERM", True)
    assert not job.request_kill("carol"), "a finished job takes no request"


def test_a_shutdown_request_ends_interrupted_not_killed_but_keeps_who() -> None:
    job = running([])
    assert job.request_kill("shutdown", shutdown=True)
    job.finish(2.0, decide(2, [143], RunResult("killed", "SIGTERM"), job.kill_request))
    record = job.record()
    assert (record["killed"], record["interrupted"], record["killed_by"]) == (False, True, "shutdown")


def test_a_timed_out_job_was_ended_by_the_timeout_whoever_asked_after() -> None:
    job = running([])
    job.request_kill("alice")  # asked while the timed-out job was winding down
    job.finish(2.0, decide(2, [143], RunResult("timed_out", "SIGTERM"), job.kill_request))
    record = job.record()
    assert (record["timed_out"], record["killed"], record["killed_by"]) == (True, False, "timeout")


def test_a_timeout_shows_while_the_job_winds_down_and_a_later_kill_changes_nothing() -> None:
    job = running([])
    assert job.request_kill("timeout", timeout=True)
    assert not job.request_kill("alice")
    record = job.record()
    assert (record["state"], record["timed_out"], record["killed"], record["interrupted"], record["killed_by"]) == (
        "running", True, False, False, "timeout")
    job.finish(2.0, decide(2, [143], RunResult("timed_out", "SIGTERM"), job.kill_request))
    record = job.record()
    assert (record["timed_out"], record["killed"], record["killed_by"], job.outcome) == (
        True, False, "timeout", Outcome.TIMED_OUT)


def test_a_shutdown_shows_interrupted_not_killed_while_the_job_winds_down() -> None:
    job = running([])
    job.request_kill("shutdown", shutdown=True)
    record = job.record()
    assert (record["killed"], record["interrupted"], record["timed_out"]) == (False, True, False)
