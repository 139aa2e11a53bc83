"""
How a job ended: one value, decided once when the job finishes, from which
the wire fields ``success``, ``killed``, ``timed_out`` and ``interrupted``
are derived (docs/protocol.rst).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from ..process.result import RunResult


class Outcome(Enum):
    SUCCEEDED = "succeeded"
    #: A command exited non-zero, or could not be started.
    FAILED = "failed"
    #: A user (or the embedding program) asked for it to end.
    KILLED = "killed"
    #: It ran longer than its timeout.
    TIMED_OUT = "timed_out"
    #: The server stopped (or died) while it ran: nobody asked for it to end.
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class KillRequest:
    """Someone asked for a job to end; the first request is the one kept."""

    #: A user's name, ``shutdown``, or None for the embedding program.
    by: str | None
    #: Asked by the server's own stop: the job ends ``interrupted``, not ``killed``.
    shutdown: bool = False
    #: The job's own ``timeout`` ran out (the runner said so): it ends ``timed_out``.
    timeout: bool = False


def decide(commands: int, return_codes: Sequence[int], result: RunResult | None,
           request: KillRequest | None) -> Outcome:
    """
    The outcome of a job with ``commands`` commands, given the exit codes
    of those that ran, how its run ended (None: it never ran, or could not
    start) and the kill request it got, if any.
    """
    stopped = None if result is None else result.stopped
    if stopped == "timed_out":
        return Outcome.TIMED_OUT
    # Stopped on request; or never ran, and someone asked (a pending job killed).
    if stopped == "killed" or (result is None and request is not None):
        return Outcome.INTERRUPTED if request is not None and request.shutdown else Outcome.KILLED
    if len(return_codes) == commands and all(code == 0 for code in return_codes):
        return Outcome.SUCCEEDED
    return Outcome.FAILED
