"""
Jobs: what a client asked to run, where it is in its life, and the views of
it that go on the wire.

Pure state and validation, no Twisted and no I/O: the dispatcher changes a
job, the runner feeds it output and exit codes, and everything a client sees
of a job (list entry, event payload, history record) is computed here from
that one object.  The wire formats are described in docs/protocol.rst.
"""

from __future__ import annotations

import math
import re
import shlex
import uuid
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PENDING = "pending"
RUNNING = "running"
FINISHED = "finished"

NO_QUEUE = "no_queue"
DEFAULT_QUEUES: Mapping[str, int] = {"no_queue": 0, "pkg_queue": 1, "iocage_queue": 1}

#: Exit code recorded for a command that could not be started at all.
EXIT_NOT_STARTED = 127
#: At most this much of a job's output (bytes as the job wrote them) goes in
#: one ``running`` update; the rest follows in the next one.
MAX_UPDATE_BYTES = 64 * 1024


class InvalidJob(ValueError):
    """
    A request to run jobs is not acceptable; the message names the job and the
    problem, in one sentence fit for a client.
    """


@dataclass(frozen=True)
class Limits:
    """Bounds on what one ``run`` request may ask for."""

    max_jobs_per_run: int = 1000
    max_commands: int = 256
    max_command_chars: int = 65536
    max_id_chars: int = 256


@dataclass(frozen=True)
class JobSpec:
    """What a client asked to run: immutable once accepted."""

    id: str
    commands: tuple[str, ...]
    argvs: tuple[tuple[str, ...], ...]
    queue: str = NO_QUEUE
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None
    #: The user who asked for it (None: the embedding program, or a job
    #: recorded before the server kept this).
    submitted_by: str | None = None


def make_job_id(queue: str) -> str:
    """A fresh job id in the original server's style: ``<queue>-{<uuid4>}``."""
    return f"{queue}-{{{uuid.uuid4()}}}"


def not_text(value: str) -> bool:
    """True if ``value`` cannot be encoded as UTF-8 (it holds a lone surrogate): no name, command or log may."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_text(where: str, what: str, value: str) -> None:
    if not_text(value):
        raise InvalidJob(f"{where}: {what} {value[:80]!r} is not valid Unicode text (it holds a lone surrogate)")


def _describe(job_id: object) -> str:
    return f"job {job_id!r}" if isinstance(job_id, str) else "a job"


#: What makes a command need ``shlex``: quotes and backslashes.  Without
#: them, POSIX splitting is a split on its four blanks.
_QUOTING = re.compile(r"['\"\\]")
_BLANKS = re.compile(r"[ \t\r\n]+")


def split_words(command: str) -> list[str]:
    """A command split into words by POSIX shell rules (``shlex.split``), quickly when nothing is quoted."""
    if _QUOTING.search(command) is not None:
        return shlex.split(command)
    return [word for word in _BLANKS.split(command) if word]


def parse_commands(
    job_id: str, value: object, limits: Limits, where: str | None = None
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """
    Validate one command or a chain and split each command into words.

    Commands are never given to a shell: they are split by POSIX shell
    quoting rules and executed directly.
    """
    where = where or _describe(job_id)
    if isinstance(value, str):
        commands: list[str] = [value]
    elif isinstance(value, list) and all(isinstance(c, str) for c in value):
        commands = list(value)
    else:
        raise InvalidJob(f"{where}: commands must be a string or a list of strings")
    if not commands:
        raise InvalidJob(f"{where}: commands must not be empty")
    if len(commands) > limits.max_commands:
        raise InvalidJob(f"{where}: a chain may hold at most {limits.max_commands} commands, got {len(commands)}")
    argvs = []
    for command in commands:
        if len(command) > limits.max_command_chars:
            raise InvalidJob(f"{where}: a command may be at most {limits.max_command_chars} characters long")
        if "\x00" in command:
            raise InvalidJob(f"{where}: command {command[:80]!r} contains a NUL character")
        _check_text(where, "command", command)
        try:
            words = split_words(command)
        except ValueError as e:
            raise InvalidJob(f"{where}: command {command[:80]!r} cannot be split into words ({e})") from None
        if not words:
            raise InvalidJob(f"{where}: command {command!r} is empty")
        argvs.append(tuple(words))
    return tuple(commands), tuple(argvs)


def _check_id(job_id: object, limits: Limits, where: str | None = None) -> str:
    if not isinstance(job_id, str) or not job_id:
        raise InvalidJob(f"{where or _describe(job_id)}: a job id must be a non-empty string")
    if len(job_id) > limits.max_id_chars:
        raise InvalidJob(f"job {job_id[:40]!r}...: a job id may be at most {limits.max_id_chars} characters long")
    if any(ord(c) < 32 for c in job_id):
        raise InvalidJob(f"job {job_id!r}: a job id must not contain control characters")
    _check_text(f"job {job_id[:80]!r}", "the job id", job_id)
    return job_id


_EXTENDED_KEYS = {"id", "commands", "queue", "cwd", "env", "timeout"}


def _spec_from_object(obj: object, index: int, queues: Collection[str], limits: Limits,
                      submitted_by: str | None) -> JobSpec:
    if not isinstance(obj, dict):
        raise InvalidJob(f"jobs[{index}] must be an object")
    unknown = sorted(set(obj) - _EXTENDED_KEYS)
    # A job is named by its id when the client gave one, else by its place.
    where = _describe(obj["id"]) if isinstance(obj.get("id"), str) else f"jobs[{index}]"
    if unknown:
        raise InvalidJob(f"{where}: unknown key {unknown[0]!r}")
    queue = obj.get("queue", NO_QUEUE)
    if not isinstance(queue, str):
        raise InvalidJob(f"{where}: queue must be a string")
    _check_text(where, "queue", queue)
    if queue not in queues:
        raise InvalidJob(f"{where}: unknown queue {queue!r} (known: {', '.join(sorted(queues))})")
    job_id = _check_id(obj["id"], limits, where) if "id" in obj else make_job_id(queue)
    if "commands" not in obj:
        raise InvalidJob(f"{where}: commands are missing")
    commands, argvs = parse_commands(job_id, obj["commands"], limits, where)
    cwd = obj.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd or "\x00" in cwd):
        raise InvalidJob(f"{where}: cwd must be a non-empty string")
    if cwd is not None:
        _check_text(where, "cwd", cwd)
    env = obj.get("env", {})
    if env is None:
        env = {}
    if not isinstance(env, dict):
        raise InvalidJob(f"{where}: env must be an object of strings")
    for key, value in env.items():
        if not isinstance(key, str):
            raise InvalidJob(f"{where}: env name {key!r} is not a valid variable name")
        if not isinstance(value, str):
            raise InvalidJob(f"{where}: env value of {key!r} must be a string")
        if not key or "=" in key or "\x00" in key or "\x00" in value:
            raise InvalidJob(f"{where}: env name {key!r} is not a valid variable name")
        _check_text(where, "env name", key)
        _check_text(where, f"env value of {key!r}", value)
    timeout = obj.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise InvalidJob(f"{where}: timeout must be a number of seconds")
        if not 0 < timeout <= 10 * 365 * 86400:
            raise InvalidJob(f"{where}: timeout must be a positive number of seconds")
    return JobSpec(job_id, commands, argvs, queue, cwd, dict(env), float(timeout) if timeout else None, submitted_by)


def specs_from_run_args(args: Mapping[str, Any], queues: Collection[str], limits: Limits = Limits(), *,
                        submitted_by: str | None = None) -> list[JobSpec]:
    """
    Read the jobs of a ``run`` action, in either form.

    Compatible form: every key but ``action`` is a job id whose value is a
    command or a chain, run in ``no_queue``.  Extended form: a ``jobs`` list
    of objects.  All or nothing: the first problem raises ``InvalidJob``.
    """
    specs: list[JobSpec] = []
    jobs = args.get("jobs")
    if isinstance(jobs, list) and (not jobs or not all(isinstance(j, str) for j in jobs)):
        # The extended form; a list of strings under "jobs" is a compatible
        # job that happens to be named "jobs".
        extra = sorted(k for k in args if k not in ("action", "jobs"))
        if extra:
            raise InvalidJob(f"run: the jobs form takes no other keys, got {extra[0]!r}")
        if len(args["jobs"]) > limits.max_jobs_per_run:
            raise InvalidJob(f"run: at most {limits.max_jobs_per_run} jobs in one request, got {len(args['jobs'])}")
        for index, obj in enumerate(args["jobs"]):
            specs.append(_spec_from_object(obj, index, queues, limits, submitted_by))
    else:
        items = [(k, v) for k, v in args.items() if k != "action"]
        if len(items) > limits.max_jobs_per_run:
            raise InvalidJob(f"run: at most {limits.max_jobs_per_run} jobs in one request, got {len(items)}")
        for job_id, value in items:
            _check_id(job_id, limits)
            commands, argvs = parse_commands(job_id, value, limits)
            specs.append(JobSpec(job_id, commands, argvs, NO_QUEUE, submitted_by=submitted_by))
    if not specs:
        raise InvalidJob("run: no jobs given")
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise InvalidJob(f"job {spec.id!r}: the same id appears twice in the request")
        seen.add(spec.id)
    return specs


class CappedLog:
    """
    The output of one command, capped: the first and last halves of the cap
    are kept, with a marker saying how many bytes were dropped between them.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0
        self._head = bytearray()
        self._head_cap = cap // 2
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._tail_cap = cap - self._head_cap
        #: Whether the last ``since`` stopped short of the end for its limit.
        self.short = False

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data or self._tail_cap <= 0:
            return
        if len(data) >= self._tail_cap:
            self._tail.clear()
            data = bytes(data[-self._tail_cap :])
            self._tail_size = 0
        self._tail.append(bytes(data))
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= self._tail_cap:
            self._tail_size -= len(self._tail.popleft())

    @property
    def dropped(self) -> int:
        kept_tail = min(self._tail_size, self._tail_cap)
        return self.total - len(self._head) - kept_tail

    def _tail_bytes(self) -> bytes:
        return b"".join(self._tail)[-self._tail_cap :] if self._tail_cap > 0 else b""

    def getvalue(self) -> bytes:
        # Joined in one copy, not one per part: a log is up to the cap.
        tail: list[bytes | bytearray] = list(self._tail)
        excess = self._tail_size - self._tail_cap
        if tail and excess > 0:
            tail[0] = tail[0][excess:]
        if self.dropped:
            return b"".join((self._head, _marker(self.dropped), *tail))
        return b"".join((self._head, *tail))

    def since(self, offset: int, final: bool = False, limit: int | None = None) -> tuple[bytes, int]:
        """
        The output from byte ``offset`` on, at most ``limit`` bytes of it, as
        far as it is kept (a marker stands for what the cap dropped), and the
        offset to continue from.  Unless ``final`` and all of it is taken,
        an incomplete UTF-8 sequence at the end is held back for next time.
        """
        total = self.total
        self.short = False
        if offset >= total:
            return b"", total
        # What the cap dropped is one marker and does not count in ``limit``.
        budget = total if limit is None else max(limit, 4)  # at least room for one character
        head_len = len(self._head)
        tail_start = total - min(self._tail_size, self._tail_cap)
        parts = []
        if offset < head_len:
            take = min(head_len - offset, budget)
            parts.append(bytes(self._head[offset : offset + take]))
            offset += take
            budget -= take
        if head_len <= offset < tail_start:
            parts.append(_marker(tail_start - offset))
            offset = tail_start
        if offset < total and budget > 0:
            take = min(total - offset, budget)
            parts.append(self._tail_bytes()[offset - tail_start : offset - tail_start + take])
            offset += take
        data = b"".join(parts)
        self.short = offset < total
        if not final or self.short:
            held = _incomplete_utf8_suffix(data)
            if held:
                return data[:-held], offset - held
        return data, offset

    def text(self) -> str:
        return self.getvalue().decode("utf-8", "replace")

    def until(self, end: int) -> bytes:
        """The output before byte ``end``, as far as it is kept (a marker stands for what the cap dropped)."""
        end = min(end, self.total)
        head_len = len(self._head)
        if end <= head_len:
            return bytes(self._head[:end])
        tail_start = self.total - min(self._tail_size, self._tail_cap)
        parts = [bytes(self._head)]
        if tail_start > head_len:
            parts.append(_marker(min(end, tail_start) - head_len))
        if end > tail_start:
            parts.append(self._tail_bytes()[: end - tail_start])
        return b"".join(parts)


def _marker(dropped: int) -> bytes:
    return f"\n[sysadm-dispatch: {dropped} bytes of output dropped here]\n".encode()


def _incomplete_utf8_suffix(data: bytes) -> int:
    """How many bytes at the end of ``data`` begin a UTF-8 character not yet complete."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return back if need > back else 0
    return 0


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
        self.killed = False
        #: Who ended it: a user's name, ``timeout`` or ``shutdown``; None
        #: while nobody has.
        self.killed_by: str | None = None
        self.timed_out = False
        self.interrupted = False
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

    @property
    def success(self) -> bool:
        return (
            self.state == FINISHED
            and not (self.killed or self.timed_out or self.interrupted)
            and len(self.return_codes) == len(self.spec.commands)
            and all(rc == 0 for rc in self.return_codes)
        )

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

    def finish(self, now: float) -> None:
        assert self.state != FINISHED, self.state
        self.state = FINISHED
        self.time_finished = now

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
