"""
Jobs: where a job is in its life, and the views of it that go on the wire.

Pure state, no Twisted and no I/O: the dispatcher changes a job and decides
how it ended (``outcome.py``), the runner feeds it output and exit codes,
and everything a client sees of a job (list entry, event payload, history
record) is computed here from that one object.  What was asked to run is a
``JobSpec`` (``spec.py``); each command's output a ``CappedLog``
(``log.py``).  The wire formats are described in docs/protocol.rst.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .log import CappedLog
from .outcome import KillRequest, Outcome
from .spec import JobSpec

PENDING = "pending"
RUNNING = "running"
FINISHED = "finished"

#: Exit code recorded for a command that could not be started at all.
EXIT_NOT_STARTED = 127
#: At most this much of a job's output (bytes as the job wrote them) goes in
#: one ``running`` update; the rest follows in the next one.
MAX_UPDATE_BYTES = 64 * 1024

#: Recent seconds already formatted by ``iso_time``: a busy server formats
#: the same few seconds for every record it builds.
_iso_seconds: dict[int, str] = {}
_ISO_CACHE = 64


def iso_time(t: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 local time with its UTC offset."""
    if t is None:
        return None
    second = math.floor(t)
    text = _iso_seconds.get(second)
    if text is None:
        if len(_iso_seconds) >= _ISO_CACHE:
            _iso_seconds.clear()
        text = _iso_seconds[second] = datetime.fromtimestamp(second).astimezone().isoformat(timespec="seconds")
    return text


class Job:
    """
    One job and everything that happened to it.  The dispatcher's job table
    holds these; every view of a job is computed from one.
    """

    def __init__(self, spec: JobSpec, log_cap: int, now: float) -> None:
        self.spec = spec
        self.state = PENDING
        self.log_cap = log_cap
        self.time_queued = now
        self.time_started: float | None = None
        self.time_finished: float | None = None
        self.logs: list[CappedLog] = []
        self.return_codes: list[int] = []
        #: How much of each command's output running updates have carried.
        self.streamed: list[int] = []
        #: How many ``running`` updates with output have been made: each
        #: running event and live record carries it, for late joiners.
        self.updates = 0
        #: How many commands' exit codes (and so which command is current) the updates so far told.
        self.commands_told = 0
        #: Whether the last update left output for the next (see ``running_update``).
        self.cut = False
        #: How it ended: set once, by ``finish``.
        self.outcome: Outcome | None = None
        #: The first request to end it, if any: while it winds down, and
        #: for a pending job until it finishes, the job shows as ``killed``.
        self.kill_request: KillRequest | None = None
        #: Who ended it: a user's name, ``timeout`` or ``shutdown``; None
        #: while nobody has.
        self.killed_by: str | None = None
        #: What the run reported at the end: the signal that ended the last
        #: command, and whether anything of the job needed SIGKILL.
        self.signal: str | None = None
        self.escalated = False
        #: Seconds this job may run: its own ``timeout``, or the server's
        #: default applied when it starts.
        self.timeout: float | None = spec.timeout

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def queue(self) -> str:
        return self.spec.queue

    @property
    def current_index(self) -> int | None:
        """
        While the job runs: the index of the command running now, or about to
        begin (the first, at the start); once its commands are over and it
        winds down, the last one run.  None unless running.
        """
        if self.state != RUNNING:
            return None
        begun = len(self.logs)
        if begun > len(self.return_codes):
            return begun - 1
        if begun < len(self.spec.commands) and not (self.return_codes and self.return_codes[-1] != 0):
            return begun
        return max(begun - 1, 0)

    @property
    def current_cmd(self) -> str | None:
        index = self.current_index
        return None if index is None else self.spec.commands[index]

    # How it ended: derived from the one outcome (and, until the job has one,
    # from the kill request).

    @property
    def success(self) -> bool:
        return self.outcome is Outcome.SUCCEEDED

    @property
    def killed(self) -> bool:
        if self.outcome is None:
            # Winding down: what was asked shows until the outcome is known.
            request = self.kill_request
            return request is not None and not (request.shutdown or request.timeout)
        return self.outcome is Outcome.KILLED

    @property
    def timed_out(self) -> bool:
        if self.outcome is None:
            return self.kill_request is not None and self.kill_request.timeout
        return self.outcome is Outcome.TIMED_OUT

    @property
    def interrupted(self) -> bool:
        if self.outcome is None:
            return self.kill_request is not None and self.kill_request.shutdown
        return self.outcome is Outcome.INTERRUPTED

    # Life cycle, driven by the dispatcher and the runner.

    def start(self, now: float) -> None:
        assert self.state == PENDING, self.state
        self.state = RUNNING
        self.time_started = now

    def begin_command(self) -> CappedLog:
        log = CappedLog(self.log_cap)
        self.logs.append(log)
        self.streamed.append(0)
        return log

    def end_command(self, exit_code: int) -> None:
        self.return_codes.append(exit_code)

    def request_kill(self, by: str | None, *, shutdown: bool = False, timeout: bool = False) -> bool:
        """Note a request to end the job; False if an earlier one (or its end) came first."""
        if self.kill_request is not None or self.outcome is not None:
            return False
        self.kill_request = KillRequest(by, shutdown, timeout)
        self.killed_by = by
        return True

    def finish(self, now: float, outcome: Outcome, *, signal: str | None = None, escalated: bool = False) -> None:
        """The job is over: how it ended is set here, once."""
        if self.outcome is not None or self.state == FINISHED:
            raise RuntimeError(f"job {self.id!r} already finished ({self.outcome})")
        self.state = FINISHED
        self.time_finished = now
        self.outcome = outcome
        self.signal = signal
        self.escalated = escalated
        if outcome is Outcome.TIMED_OUT:
            self.killed_by = "timeout"

    # Views.

    def list_entry(self, position: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"commands": list(self.spec.commands), "state": self.state}
        if position is not None:
            entry["queue_position"] = position
        entry["queue"] = self.queue
        entry["time_queued"] = iso_time(self.time_queued)
        if self.time_started is not None:
            entry["time_started"] = iso_time(self.time_started)
        if self.current_cmd is not None:
            entry["current_cmd"] = self.current_cmd
        if self.spec.submitted_by is not None:
            entry["submitted_by"] = self.spec.submitted_by
        return entry

    def _details_head(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "process_id": self.id,
            "state": self.state,
            "cmd_list": list(self.spec.commands),
        }
        if self.time_started is not None:
            details["time_started"] = iso_time(self.time_started)
        if self.state == FINISHED:
            details["time_finished"] = iso_time(self.time_finished)
        if self.current_cmd is not None:
            details["current_cmd"] = self.current_cmd
        return details

    def process_details(self) -> dict[str, Any]:
        """Every command's whole (capped) log and exit code so far."""
        details = self._details_head()
        for index, log in enumerate(self.logs):
            command = self.spec.commands[index]
            # A command repeated in a chain shares its key: its logs are
            # concatenated and the last exit code stands.
            details[command] = details.get(command, "") + log.text()
            if index < len(self.return_codes):
                details[f"return_codes/{command}"] = str(self.return_codes[index])
        return details

    def has_unstreamed_output(self) -> bool:
        return any(log.total > sent for log, sent in zip(self.logs, self.streamed, strict=True))

    def has_news(self) -> bool:
        """Whether a ``running`` update would tell something: new output, or a command that ended since."""
        return len(self.return_codes) > self.commands_told or self.has_unstreamed_output()

    def running_update(self, limit: int = MAX_UPDATE_BYTES) -> dict[str, Any]:
        """
        ``process_details`` for a ``running`` update: each command's output
        since the previous update only, at most ``limit`` bytes of it in all
        (``cut`` says whether more is waiting), and the exit codes of the
        commands that ended.  Advances what counts as sent.
        """
        self.updates += 1
        self.cut = False
        self.commands_told = len(self.return_codes)
        details = self._details_head()
        for index, log in enumerate(self.logs):
            command = self.spec.commands[index]
            ended = index < len(self.return_codes)
            before = self.streamed[index]
            if log.total > before and limit < 4:  # no room for a character
                self.cut = True
                data = b""
            else:
                data, self.streamed[index] = log.since(before, final=ended, limit=limit)
                self.cut = self.cut or log.short
                limit -= len(data)
            if data:
                details[command] = details.get(command, "") + data.decode("utf-8", "replace")
            if ended:
                details[f"return_codes/{command}"] = str(self.return_codes[index])
        return details

    def live_record(self) -> dict[str, Any]:
        """
        The record of a pending or running job for ``rpc/logs``: each
        command's output as far as the ``running`` updates so far carried
        it (the next update goes on from there), and the exit codes so far.
        """
        if self.state != RUNNING:
            return self.record()
        details = self._details_head()
        for index, log in enumerate(self.logs):
            command = self.spec.commands[index]
            data = log.until(self.streamed[index])
            if data:
                details[command] = details.get(command, "") + data.decode("utf-8", "replace")
            if index < len(self.return_codes):
                details[f"return_codes/{command}"] = str(self.return_codes[index])
        return self.record(details)

    def record(self, details: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``args`` of a dispatcher event about this job (and its history record)."""
        record: dict[str, Any] = {
            "state": self.state,
            "process_id": self.id,
            "process_details": self.process_details() if details is None else details,
            "queue": self.queue,
            "success": ("true" if self.success else "false") if self.state == FINISHED else None,
            "killed": self.killed,
            "timed_out": self.timed_out,
            "interrupted": self.interrupted,
            "signal": self.signal,
            "escalated": self.escalated,
            "submitted_by": self.spec.submitted_by,
            "killed_by": self.killed_by,
        }
        if self.state == RUNNING:
            record["update"] = self.updates
        return record


def positions(jobs: Sequence[Job], numbered: bool) -> list[tuple[Job, str | None]]:
    """
    Pair each active job of a queue with its ``queue_position``: running jobs
    are ``"0"``, pending ones ``"1"``, ``"2"``... in the order they will run.
    Queues without a limit carry no positions.
    """
    if not numbered:
        return [(job, None) for job in jobs]
    out: list[tuple[Job, str | None]] = []
    n = 0
    for job in jobs:
        if job.state == RUNNING:
            out.append((job, "0"))
        else:
            n += 1
            out.append((job, str(n)))
    return out
