"""
How a run's ``RunResult`` becomes the job's record in the dispatcher: who
ended it first wins, a timeout is recorded as such, and a job a user killed
is not counted as interrupted by a shutdown meanwhile.
"""

from __future__ import annotations

from typing import Any

from fakes import FakeRunner
from twisted.internet.task import Clock

from sysadm_dispatch.core.dispatcher import Dispatcher
from sysadm_dispatch.process.result import RunResult


class LingeringRunner(FakeRunner):
    """A job that takes its time to die: ``kill`` is noted, the test ends the run."""

    def kill(self, *, timed_out: bool = False) -> None:
        if self.stopped is None:
            self.stopped = "timed_out" if timed_out else "killed"


def start(job_id: str = "j") -> tuple[Dispatcher, LingeringRunner, list[dict[str, Any]]]:
    FakeRunner.made.clear()
    dispatcher = Dispatcher(Clock(), runner_factory=LingeringRunner)
    finished: list[dict[str, Any]] = []
    dispatcher.events.subscribe("dispatcher", lambda e: finished.append(e.args) if e.args["state"] == "finished"
                                else None)
    dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [{"id": job_id, "commands": "sleep 1"}]}))
    [runner] = FakeRunner.made
    return dispatcher, runner, finished  # type: ignore[return-value]


def test_the_first_user_to_kill_a_running_job_is_recorded() -> None:
    dispatcher, runner, finished = start()
    dispatcher.kill(["j"], by="alice")
    dispatcher.kill(["j"], by="bob")
    runner.end(143, RunResult("killed", "SIGTERM"))
    [record] = finished
    assert (record["killed"], record["timed_out"], record["killed_by"], record["signal"]) == (
        True, False, "alice", "SIGTERM")


def test_a_timeout_before_a_kill_is_recorded_as_the_timeout() -> None:
    dispatcher, runner, finished = start()
    runner.kill(timed_out=True)  # the runner's own timer
    dispatcher.kill(["j"], by="alice")
    runner.end(137, RunResult("timed_out", "SIGKILL", escalated=True))
    [record] = finished
    assert (record["killed"], record["timed_out"], record["killed_by"], record["escalated"]) == (
        False, True, "timeout", True)


def test_a_job_killed_by_a_user_is_not_interrupted_by_a_stop_meanwhile() -> None:
    dispatcher, runner, finished = start()
    dispatcher.kill(["j"], by="alice")
    stopped = dispatcher.stopService()
    runner.end(143, RunResult("killed", "SIGTERM"))
    [record] = finished
    assert (record["killed"], record["interrupted"], record["killed_by"]) == (True, False, "alice")
    assert stopped.called
