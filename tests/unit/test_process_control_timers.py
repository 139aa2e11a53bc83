"""
The runner's policy and timers, driven by a Clock and a stand-in process
tracker: TERM, grace, KILL, timeouts, polling, giving up, stopping what a
job left running, and every timer cancelled at the end.  The real processes
are in test_process_control.py.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sysadm_dispatch.core.job import Job
from sysadm_dispatch.core.spec import specs_from_run_args
from sysadm_dispatch.process import runner as runner_module
from sysadm_dispatch.process.procs import JobTree
from sysadm_dispatch.process.result import RunResult
from sysadm_dispatch.process.runner import (
    AFTER_KILL_SECONDS,
    LINGER_SECONDS,
    POLL_FIRST_SECONDS,
    POLL_MAX_SECONDS,
    JobRunner,
    exit_code,
)
from sysadm_dispatch.process.spawn import SpawnError

GRACE = 5.0


def exited(code: int) -> int:
    return code << 8


def killed_by(sig: int) -> int:
    return int(sig)


class FakeCommand:
    def __init__(self, pid: int, on_output: Callable[[bytes], None], on_closed: Callable[[], None],
                 on_exit: Callable[[int | None], None]) -> None:
        self.pid = pid
        self.on_output = on_output
        self.on_closed = on_closed
        self.on_exit = on_exit
        self.output_open = True
        self.held = False  # something outside the job keeps the pipe open

    def drain(self) -> bool:
        if not self.held:
            self.close()
        return not self.output_open

    def close(self) -> None:
        if self.output_open:
            self.output_open = False
            self.on_closed()

    def abandon(self) -> None:
        self.close()


class FakeProcesses:
    """Records what the runner asks of the tracker; the test answers."""

    subreaper = False

    def __init__(self) -> None:
        self.commands: list[FakeCommand] = []
        self.sweeps: list[tuple[int | None, Deferred[int]]] = []
        self.empty = True
        self.forgotten = False
        self.fail_with: SpawnError | None = None

    def new_tree(self) -> JobTree:
        return JobTree("token")

    def start_command(self, tree: JobTree, argv: Any, cwd: Any, env: Any, on_output: Any, on_closed: Any,
                      on_exit: Any) -> FakeCommand:
        if self.fail_with is not None:
            raise self.fail_with
        command = FakeCommand(1000 + len(self.commands), on_output, on_closed, on_exit)
        self.commands.append(command)
        return command

    def forget(self, tree: JobTree) -> None:
        self.forgotten = True

    def quick_empty(self, tree: JobTree) -> bool:
        return self.empty

    def sweep(self, tree: JobTree, sig: int | None = None) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.sweeps.append((sig, d))
        return d

    def answer(self, alive: int) -> int | None:
        """Answer the oldest open sweep; returns the signal it carried."""
        sig, d = self.sweeps.pop(0)
        d.callback(alive)
        return sig

    def answer_all(self, alive: int) -> list[int | None]:
        return [self.answer(alive) for _ in range(len(self.sweeps))]


class Ended:
    """A finished run as the tests read it: the job's exit codes and logs, and the runner's ``RunResult``."""

    def __init__(self, job: Job, result: RunResult) -> None:
        self.return_codes = job.return_codes
        self.logs = job.logs
        self.killed = result.stopped == "killed"
        self.timed_out = result.stopped == "timed_out"
        self.signal = result.signal
        self.escalated = result.escalated


def make(commands: list[str] | str = "sleep 300", timeout: float | None = None) -> tuple[Clock, FakeProcesses,
                                                                                        JobRunner, list[Ended]]:
    clock = Clock()
    processes = FakeProcesses()
    [spec] = specs_from_run_args({"jobs": [{"id": "j", "commands": commands}]}, ["no_queue"])
    job = Job(spec, 1 << 20, 0.0)
    job.timeout = timeout
    job.start(0.0)
    runner = JobRunner(clock, job, environ={}, kill_grace=GRACE, processes=processes)  # type: ignore[arg-type]
    done: list[Ended] = []
    runner.start().addCallback(lambda result: done.append(Ended(job, result)))
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
    command.on_exit(killed_by(signal.SIGTERM))
    assert processes.answer(0) is None  # looked again once the leader was gone: nothing left
    command.close()
    [job] = done
    assert (job.killed, job.timed_out, job.signal, job.escalated) == (True, False, "SIGTERM", False)
    assert job.return_codes == [143]
    assert clock.getDelayedCalls() == [] and processes.forgotten


def test_term_ignored_gets_kill_after_exactly_the_grace() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    runner.kill()
    processes.answer(1)
    clock.advance(GRACE - 0.001)
    assert processes.sweeps == [] and not runner._needed_kill
    clock.advance(0.001)
    assert runner._needed_kill  # the leader was still running
    assert processes.answer(1) == signal.SIGKILL
    command.on_exit(killed_by(signal.SIGKILL))
    assert processes.answer(0) == signal.SIGKILL  # a straggler found after SIGKILL gets it too
    [job] = done
    assert (job.killed, job.signal, job.escalated) == (True, "SIGKILL", True)
    assert clock.getDelayedCalls() == []


def test_leftover_that_ignores_term_is_polled_with_backoff_then_killed() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    runner.kill()
    processes.answer(1)
    command.on_exit(killed_by(signal.SIGTERM))
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
    assert signal.SIGKILL in signals and runner._needed_kill
    while not done:
        clock.advance(POLL_MAX_SECONDS)
        processes.answer_all(0)
    [job] = done
    assert job.signal == "SIGTERM" and job.escalated  # the leader died of TERM; a straggler needed KILL


def test_escalation_not_claimed_when_nothing_was_left_to_kill() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    runner.kill()
    processes.answer(1)
    command.on_exit(killed_by(signal.SIGTERM))
    processes.answer(1)  # a child still dying
    clock.advance(GRACE)  # the poll and the grace end together
    processes.answer_all(0)
    clock.advance(1)
    processes.answer_all(0)
    [job] = done
    assert job.escalated is False


def test_timeout_fires_at_its_time_and_is_recorded() -> None:
    clock, processes, runner, done = make(timeout=10.0)
    [command] = processes.commands
    clock.advance(9.999)
    assert processes.sweeps == []
    clock.advance(0.001)
    assert processes.answer(1) == signal.SIGTERM
    command.on_exit(killed_by(signal.SIGTERM))
    processes.answer(0)
    [job] = done
    assert (job.timed_out, job.killed, job.return_codes) == (True, False, [143])
    assert clock.getDelayedCalls() == []


def test_job_that_ends_first_cancels_its_timeout() -> None:
    clock, processes, runner, done = make(timeout=10.0)
    processes.commands[0].on_exit(exited(0))
    [job] = done
    assert job.return_codes == [0] and not job.timed_out
    assert clock.getDelayedCalls() == []


def test_kill_after_timeout_keeps_the_first_reason() -> None:
    clock, processes, runner, done = make(timeout=1.0)
    clock.advance(1.0)
    runner.kill()
    processes.answer(0)
    processes.commands[0].on_exit(killed_by(signal.SIGTERM))
    processes.answer(0)
    [job] = done
    assert (job.timed_out, job.killed) == (True, False)


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
    [job] = done
    assert job.return_codes == []
    assert "survived SIGKILL" in job.logs[0].text()
    processes.commands[0].on_exit(killed_by(signal.SIGKILL))  # when it finally dies: ignored
    assert job.return_codes == []


def test_processes_left_running_are_stopped_at_the_end() -> None:
    clock, processes, runner, done = make(["true", "true"])
    processes.commands[0].on_exit(exited(0))
    assert len(processes.commands) == 2  # the chain goes on; nothing is stopped between commands
    processes.empty = False
    processes.commands[1].on_exit(exited(0))
    assert processes.answer(2) == signal.SIGTERM
    assert "stopping 2 processes the job left running" in runner.job.logs[1].text()
    processes.answer(0)
    [job] = done
    assert not job.killed and not job.escalated and job.return_codes == [0, 0]


def test_chain_stops_at_a_command_that_cannot_start() -> None:
    clock, processes, runner, done = make(["true", "missing-thing", "true"])
    processes.fail_with = SpawnError("cannot execute 'x': permission denied (not executable)", 126)
    processes.commands[0].on_exit(exited(0))
    [job] = done
    assert job.return_codes == [0, 126]
    assert "sysadm-dispatch: cannot run command: cannot execute" in job.logs[1].text()
    assert clock.getDelayedCalls() == []


def test_output_held_by_an_outsider_is_awaited_for_the_linger_then_dropped() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    command.held = True
    command.on_exit(exited(0))
    assert not done
    clock.advance(LINGER_SECONDS - 0.001)
    assert not done
    clock.advance(0.001)
    assert done and not command.output_open


def test_output_closing_during_the_linger_finishes_at_once() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    command.held = True
    command.on_exit(exited(0))
    clock.advance(0.5)
    command.close()
    assert done
    assert clock.getDelayedCalls() == []


def test_kill_while_only_output_is_awaited_finishes_at_once() -> None:
    clock, processes, runner, done = make()
    [command] = processes.commands
    command.held = True
    command.on_exit(exited(0))
    runner.kill()
    [job] = done
    assert job.killed and clock.getDelayedCalls() == []


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGINT])
def test_death_by_signal_is_a_failure_that_names_it(sig: int) -> None:
    clock, processes, runner, done = make(["crash", "never"])
    processes.commands[0].on_exit(killed_by(sig))
    [job] = done
    assert job.return_codes == [128 + sig] and job.signal == signal.Signals(sig).name and not job.killed


def test_default_tracker_is_shared_per_reactor() -> None:
    clock = Clock()
    assert runner_module.tracker_for(clock) is runner_module.tracker_for(clock)
    assert runner_module.tracker_for(clock) is not runner_module.tracker_for(Clock())
