"""
What a client asks to run: the ``run`` request read and checked into
``JobSpec`` values (docs/protocol.rst describes both forms).  Pure
validation: no Twisted and no I/O.
"""

from __future__ import annotations

import re
import shlex
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

NO_QUEUE = "no_queue"
DEFAULT_QUEUES: Mapping[str, int] = {"no_queue": 0, "pkg_queue": 1, "iocage_queue": 1}


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

