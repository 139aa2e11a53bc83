"""
How a run of a job's commands ended, as the process room saw it.

The runner reports this once, when every process of the job is gone; the
core turns it (with what it knows: who asked for a kill, a shutdown) into
the job's one outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Why the runner stopped the job's processes before its commands ran their
#: course: ``kill()`` was called, or the job's timeout fired (the first wins).
Stopped = Literal["killed", "timed_out"]


@dataclass(frozen=True)
class RunResult:
    #: None when the commands ran their course (the last one exited by itself).
    stopped: Stopped | None = None
    #: The name of the signal that ended the last command run (``SIGTERM``), if one did.
    signal: str | None = None
    #: Whether anything of the job was still alive after the grace and got SIGKILL.
    escalated: bool = False
