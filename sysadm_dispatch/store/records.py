"""
What the store keeps and hands back, and its one error type.

The store knows a job's specification only by its fields (``SpecLike``):
it writes them as JSON and gives them back as the keyword arguments they
were read from, for the dispatcher to build its own spec with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

#: Finished records (finish time, record), newest first, and whether more matched.
HistoryPage = tuple[list[tuple[float, dict[str, Any]]], bool]


class StoreError(Exception):
    """The database could not do what was asked; the message says why, for a client."""


class SpecLike(Protocol):
    """The fields of an accepted job's specification that the store records."""

    @property
    def id(self) -> str: ...
    @property
    def commands(self) -> tuple[str, ...]: ...
    @property
    def argvs(self) -> tuple[tuple[str, ...], ...]: ...
    @property
    def queue(self) -> str: ...
    @property
    def cwd(self) -> str | None: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def timeout(self) -> float | None: ...
    @property
    def submitted_by(self) -> str | None: ...


@dataclass(frozen=True)
class StoredJob:
    """
    An active job as recorded: ``spec_fields`` are the keyword arguments of
    its specification (``id``, ``commands``, ``argvs``, ``queue``, ``cwd``,
    ``env``, ``timeout``, ``submitted_by``); ``time_started`` is None while
    it is pending.
    """

    spec_fields: dict[str, Any]
    time_queued: float
    time_started: float | None


@dataclass(frozen=True)
class Opened:
    """What ``Store.open`` found: the active jobs in acceptance order."""

    jobs: list[StoredJob]
    moved_aside: str | None


def spec_to_json(spec: SpecLike) -> str:
    """The ``spec`` column of ``active_jobs`` (who submitted it has a column of its own)."""
    return json.dumps({
        "id": spec.id, "commands": list(spec.commands), "argvs": [list(a) for a in spec.argvs],
        "queue": spec.queue, "cwd": spec.cwd, "env": dict(spec.env), "timeout": spec.timeout,
    })


def spec_fields(text: str, submitted_by: str | None) -> dict[str, Any]:
    """The keyword arguments of the specification written by ``spec_to_json``."""
    d = json.loads(text)
    return {"id": d["id"], "commands": tuple(d["commands"]), "argvs": tuple(tuple(a) for a in d["argvs"]),
            "queue": d["queue"], "cwd": d["cwd"], "env": dict(d["env"]), "timeout": d["timeout"],
            "submitted_by": submitted_by}
