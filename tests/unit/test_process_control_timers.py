"""
The runner's policy and timers, driven by a Clock and a stand-in process
tracker whose commands' transports are fakes (tests/fakes.py): TERM, grace,
KILL through ``signalProcess``, timeouts, polling, giving up, stopping what
a job left running, and every timer cancelled at the end.  The real
processes are in test_process_control.py, under both spawners.
"""

from __future__ import annotations

import signal

import pytest
from fakes import FakeTracker
from twisted.internet.task import Clock

from sysadm_dispatch.core.job import Job
from sysadm_dispatch.core.spec import specs_from_run_args
from sysadm_dispatch.process.result import RunResult
from sysadm_dispatch.process.runner import (
    AFTER_KILL_SECONDS,
    LINGER_SECONDS,
    POLL_FIRST_SECONDS,
    POLL_MAX_SECONDS,
    JobRunner,
    RunState,
    exit_code,
)
from sysadm_dispatch.process.spawn import SpawnError

GRACE = 5.0


def exited(code: int) -> int:
    return code << 8


def killed_by(sig: int) -> int:
    return int(sig)


def make(commands: list[str] | str = "sleep 300", timeout: float | None = None) -> tuple[
        Clock, FakeTracker, JobRunner[Job], list[RunResult]]:
    clock = Clock()
    processes = FakeTracker(clock)
    [spec] = specs_from_run_args({"jobs": [{"id": "j", "commands": commands}]}, ["no_queue"])
    job = Job(spec, 1 << 20, 0.0)
    job.timeout = timeout
    job.start(0.0)
    runner = JobRunner(clock, job, environ={}, kill_grace=GRACE, processes=processes)  # type: ignore[arg-type]
    done: list[RunResult] = []
    runner.start().addCallback(done.append)
    return clock, processes, runner, done


def test_exit_codes_as_a_shell_reports_them() -> None:
    assert exit_code(exited(0)) == (0, None)
    assert exit_code(exited(3)) == (3, None)
    assert exit_code(killed_by(signal.SIGTERM)) == (143, "SIGTERM")
    assert exit_code(killed_by(signal.SIGKILL)) == (137, "SIGKILL")
    assert exit_code(None) == (255, None)


def test_killed_job_that_obeys_term_needs_no_kill() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    runner.kill()
    assert processes.answer(1) == signal.SIGTERM
    command.exit(killed_by(signal.SIGTERM))
    assert processes.answer(0) is None  # looked again once the leader was gone: nothing left
    command.close()
    assert done == [RunResult("killed", "SIGTERM", False)]
    assert runner.job.return_codes == [143]
    assert command.signals == ["TERM"]  # through the command's transport
    assert clock.getDelayedCalls() == [] and processes.forgotten


def test_term_ignored_gets_kill_after_exactly_the_grace() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    runner.kill()
    processes.answer(1)
    clock.advance(GRACE - 0.001)
    assert processes.sweeps == [] and not runner._escalated
    clock.advance(0.001)
    assert runner._escalated and runner.state is RunState.KILLING  # the leader was still running
    assert processes.answer(1) == signal.SIGKILL
    command.exit(killed_by(signal.SIGKILL))
    assert processes.answer(0) == signal.SIGKILL  # a straggler found after SIGKILL gets it too
    assert done == [RunResult("killed", "SIGKILL", True)]
    assert command.signals[:2] == ["TERM", "KILL"]
    assert clock.getDelayedCalls() == []


def test_leftover_that_ignores_term_is_polled_with_backoff_then_killed() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    runner.kill()
    processes.answer(1)
    command.exit(killed_by(signal.SIGTERM))
    waits = []
    while clock.seconds() < GRACE:
        assert processes.answer(1) is None  # still something alive: look again later
        before = clock.seconds()
        clock.advance(min(call.getTime() for call in clock.getDelayedCalls()) - before)
        waits.append(round(clock.seconds() - before, 6))
    assert waits[:3] == [POLL_FIRST_SECONDS, 2 * POLL_FIRST_SECONDS, 4 * POLL_FIRST_SECONDS]
    assert max(waits) == POLL_MAX_SECONDS
    # The grace is over: SIGKILL, and whatever answered it was needed.
    signals = processes.answer_all(1)
    assert signal.SIGKILL in signals and runner._escalated
    while not done:
        clock.advance(POLL_MAX_SECONDS)
        processes.answer_all(0)
    [result] = done
    assert result.signal == "SIGTERM" and result.escalated  # the leader died of TERM; a straggler needed KILL


def test_escalation_not_claimed_when_nothing_was_left_to_kill() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    runner.kill()
    processes.answer(1)
    command.exit(killed_by(signal.SIGTERM))
    processes.answer(1)  # a child still dying
    clock.advance(GRACE)  # the poll and the grace end together
    processes.answer_all(0)
    clock.advance(1)
    processes.answer_all(0)
    [result] = done
    assert result.escalated is False


def test_timeout_fires_at_its_time_and_is_recorded() -> None:
    clock, processes, runner, done = make(timeout=10.0)
    [command] = processes.commands
    clock.advance(9.999)
    assert processes.sweeps == []
    clock.advance(0.001)
    assert processes.answer(1) == signal.SIGTERM
    command.exit(killed_by(signal.SIGTERM))
    processes.answer(0)
    assert done == [RunResult("timed_out", "SIGTERM", False)] and runner.job.return_codes == [143]
    assert clock.getDelayedCalls() == []


def test_timeout_is_told_at_once_and_only_once_before_the_run_ends() -> None:
    clock, processes, runner, done = make(timeout=2.0)
    told: list[Job] = []
    runner.on_timeout = told.append
    clock.advance(2.0)
    assert told == [runner.job] and done == []  # its processes are still being stopped
    runner.kill()
    processes.answer(1)
    processes.commands[0].exit(killed_by(signal.SIGTERM))
    processes.answer(0)
    assert told == [runner.job] and [r.stopped for r in done] == ["timed_out"]


def test_a_kill_before_the_timeout_keeps_the_timeout_untold() -> None:
    clock, processes, runner, done = make(timeout=2.0)
    told: list[Job] = []
    runner.on_timeout = told.append
    runner.kill()
    processes.answer(1)
    clock.advance(2.0)
    assert told == []


def test_job_that_ends_first_cancels_its_timeout() -> None:
    clock, processes, runner, done = make(timeout=10.0)
    processes.commands[0].exit(exited(0))
    assert done == [RunResult()] and runner.job.return_codes == [0]
    assert clock.getDelayedCalls() == []


def test_kill_after_timeout_keeps_the_first_reason() -> None:
    clock, processes, runner, done = make(timeout=1.0)
    clock.advance(1.0)
    runner.kill()
    processes.answer(0)
    processes.commands[0].exit(killed_by(signal.SIGTERM))
    processes.answer(0)
    [result] = done
    assert result.stopped == "timed_out"
    assert runner.stopped == "timed_out"


def test_unkillable_leader_is_given_up_on_without_an_invented_exit_code() -> None:
    assert AFTER_KILL_SECONDS == 2.0  # as docs/processes.rst says
    clock, processes, runner, done = make()
    runner.kill()
    processes.answer(1)
    clock.advance(GRACE)
    processes.answer(1)
    clock.advance(AFTER_KILL_SECONDS - 0.001)
    assert not done
    clock.advance(0.001)
    assert done == [RunResult("killed", None, True)]
    job = runner.job
    assert job.return_codes == []
    assert "survived SIGKILL" in job.logs[0].text()
    processes.commands[0].exit(killed_by(signal.SIGKILL))  # when it finally dies: ignored
    assert job.return_codes == []


def test_processes_left_running_are_stopped_at_the_end() -> None:
    clock, processes, runner, done = make(["true", "true"])
    processes.commands[0].exit(exited(0))
    assert len(processes.commands) == 2  # the chain goes on; nothing is stopped between commands
    processes.empty = False
    processes.commands[1].exit(exited(0))
    assert processes.answer(2) == signal.SIGTERM
    assert "stopping 2 processes the job left running" in runner.job.logs[1].text()
    processes.answer(0)
    assert done == [RunResult()] and runner.job.return_codes == [0, 0]


def test_chain_stops_at_a_command_that_cannot_start() -> None:
    clock, processes, runner, done = make(["true", "sh", "true"])
    processes.fail_with = SpawnError("cannot execute 'x': permission denied (not executable)", 126)
    processes.commands[0].exit(exited(0))
    job = runner.job
    assert done == [RunResult()] and job.return_codes == [0, 126]
    assert "sysadm-dispatch: cannot run command: cannot execute" in job.logs[1].text()
    assert clock.getDelayedCalls() == []


def test_output_held_by_an_outsider_is_awaited_for_the_linger_then_dropped() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    command.held = True
    command.exit(exited(0))
    assert not done
    clock.advance(LINGER_SECONDS - 0.001)
    assert not done
    clock.advance(0.001)
    assert done and not command.output_open


def test_output_closing_during_the_linger_finishes_at_once() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    command.held = True
    command.exit(exited(0))
    clock.advance(0.5)
    command.close()
    assert done
    assert clock.getDelayedCalls() == []


def test_output_read_to_its_end_before_the_exit_finishes_the_job_at_once() -> None:
    # As both backends tell it: the pipe's end, then the exit; the job is
    # over then, with no linger timer, even before ``processEnded``.
    clock, processes, runner, done = make("true")
    [command] = processes.commands
    command.held = True  # processEnded not told
    command.proto.childConnectionLost(1)
    command.exit(exited(0))
    assert done == [RunResult()] and runner.state is RunState.FINISHED
    assert clock.getDelayedCalls() == []


def test_kill_while_only_output_is_awaited_finishes_at_once() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    command.held = True
    command.exit(exited(0))
    runner.kill()
    assert done == [RunResult("killed")] and clock.getDelayedCalls() == []


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGINT])
def test_death_by_signal_is_a_failure_that_names_it(sig: int) -> None:
    clock, processes, runner, done = make(["sh", "true"])
    processes.commands[0].exit(killed_by(sig))
    assert done == [RunResult(None, signal.Signals(sig).name)] and runner.job.return_codes == [128 + sig]


def test_states_from_start_to_finish() -> None:
    clock, processes, runner, done = make(["true", "true"])
    assert runner.state is RunState.RUNNING
    processes.commands[0].exit(exited(0))
    assert runner.state is RunState.RUNNING and len(processes.commands) == 2
    processes.commands[1].held = True
    processes.commands[1].exit(exited(0))
    assert runner.state is RunState.DRAINING
    processes.commands[1].close()
    assert runner.state is RunState.FINISHED and done == [RunResult()]


def test_an_exit_reported_while_the_command_is_being_started_is_kept() -> None:
    # Without pidfds a command can be reaped before its spawn returns.
    clock, processes, runner, done = make(["true", "true"])
    real_spawn = processes.spawn

    def spawn_and_exit(*args: object) -> None:
        real_spawn(*args)  # type: ignore[arg-type]
        assert runner.state is RunState.STARTING
        processes.commands[-1].exit(exited(0))

    processes.spawn = spawn_and_exit  # type: ignore[method-assign]
    processes.commands[0].exit(exited(0))
    assert runner.job.return_codes == [0, 0] and done == [RunResult()]


def test_kill_after_the_command_exited_reaches_what_it_left_through_its_transport() -> None:
    clock, processes, runner, done = make(["true"])
    processes.empty = False
    [command] = processes.commands
    command.exit(exited(0))
    assert command.signals == ["TERM"]  # the job's end: what it left running is stopped
    processes.answer(1)
    runner.kill()  # already stopping: nothing new, but the reason is kept
    assert command.signals == ["TERM"]
    processes.answer(0)
    assert done == [RunResult("killed")]
