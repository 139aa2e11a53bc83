"""
Reading the job history over ``rpc/logs``: the ``read_logs`` query (log
names, time formats, period, limit) and the shape of its reply.

Pure functions, no I/O: the router parses a query here, the dispatcher's
store answers it, and the reply is built here.  The wire format is in
docs/protocol.rst ("Job history").
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

LOG_NAMES = ("dispatcher",)
TIME_FORMATS = ("time_t_seconds", "epoch_mseconds", "relative_second", "relative_day", "relative_month")
#: Without a period, the last 12 hours (as the original server).
DEFAULT_PERIOD = 12 * 3600.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Bounds that keep every time a datetime can represent.
_MAX_SECONDS = 250_000_000_000.0
_MAX_MONTHS = 12 * 1000


class BadQuery(ValueError):
    """A ``rpc/logs`` request that cannot be answered; the message says why, for a client."""


@dataclass(frozen=True)
class LogQuery:
    logs: tuple[str, ...]
    start: float
    end: float
    limit: int


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadQuery(f"read_logs: {name} must be a number (or a string holding one)")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise BadQuery(f"read_logs: {name} {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number) or abs(number) > _MAX_SECONDS * 1000:
        raise BadQuery(f"read_logs: {name} {str(value)[:40]!r} is out of range")
    return number


def add_months(t: float, months: int) -> float:
    """The same local day and time ``months`` calendar months from ``t`` (the day clamped to the month)."""
    local = datetime.fromtimestamp(t)
    year, month = divmod(local.year * 12 + local.month - 1 + months, 12)
    day = min(local.day, calendar.monthrange(year, month + 1)[1])
    return local.replace(year=year, month=month + 1, day=day).timestamp()


def to_time(name: str, time_format: str, value: Any, now: float) -> float:
    """``value`` of ``start_time``/``end_time`` in ``time_format``, as seconds since the epoch."""
    number = _number(name, value)
    if time_format == "time_t_seconds":
        t = number
    elif time_format == "epoch_mseconds":
        t = number / 1000
    elif time_format == "relative_second":
        t = now + number
    elif time_format == "relative_day":
        t = now + number * 86400
    else:
        if number != int(number) or abs(number) > _MAX_MONTHS:
            raise BadQuery(f"read_logs: {name} must be a whole number of months, at most {_MAX_MONTHS} away")
        return add_months(now, int(number))
    if abs(t) > _MAX_SECONDS:
        raise BadQuery(f"read_logs: {name} {str(value)[:40]!r} is out of range")
    return t


def _log_names(value: Any) -> tuple[str, ...]:
    if value is None:
        return LOG_NAMES
    if isinstance(value, str):
        names = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        names = value
    else:
        raise BadQuery("read_logs: logs must be a log name or a non-empty list of names")
    known = tuple(dict.fromkeys(n for n in names if n in LOG_NAMES))
    if not known:
        raise BadQuery(f"read_logs: no known log named (known: {', '.join(LOG_NAMES)})")
    return known


def _limit(value: Any) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise BadQuery(f"read_logs: limit must be a whole number from 1 to {MAX_LIMIT}")
    return value


def parse_read_logs(args: Mapping[str, Any], now: float) -> LogQuery:
    """Read a ``read_logs`` request; raises ``BadQuery`` naming the field that is wrong."""
    logs = _log_names(args.get("logs"))
    limit = _limit(args.get("limit"))
    time_format = args.get("time_format")
    start_value, end_value = args.get("start_time"), args.get("end_time")
    if time_format is not None and time_format not in TIME_FORMATS:
        shown = str(time_format)[:40] if isinstance(time_format, str) else type(time_format).__name__
        raise BadQuery(f"read_logs: unknown time_format {shown!r} (known: {', '.join(TIME_FORMATS)})")
    if time_format is None and (start_value is not None or end_value is not None):
        raise BadQuery(f"read_logs: start_time and end_time need a time_format ({', '.join(TIME_FORMATS)})")
    end = now if end_value is None else to_time("end_time", str(time_format), end_value, now)
    if start_value is None:
        start = end - DEFAULT_PERIOD
    else:
        start = to_time("start_time", str(time_format), start_value, now)
    if start > end:
        raise BadQuery("read_logs: start_time is after end_time")
    return LogQuery(logs, start, end, limit)


def history_key(t: float) -> str:
    """A record's key: its finish time in ISO 8601 local time, with microseconds and the UTC offset."""
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="microseconds")


def flat_record(record: dict[str, Any]) -> dict[str, Any]:
    """
    A job's record as the original logged it: the keys of its
    ``process_details`` (``cmd_list``, ``"<command>"``,
    ``"return_codes/<command>"``, the times...) at the top level, beside
    the event's own fields, which win a clash (the details stay whole in
    ``process_details``).
    """
    details = record.get("process_details")
    if not isinstance(details, dict):
        return record
    return {**details, **record}


def read_logs_reply(query: LogQuery, records: Sequence[tuple[float, dict[str, Any]]],
                    truncated: bool) -> dict[str, Any]:
    """
    The reply ``args``: records (newest first) under unique keys; when two
    would share a key, the one that finished later gets ``#2`` (``#3``...).
    """
    seen: dict[str, int] = {}
    keys: list[str] = []
    for t, _ in reversed(records):
        base = history_key(t)
        n = seen[base] = seen.get(base, 0) + 1
        keys.append(base if n == 1 else f"{base}#{n}")
    keys.reverse()
    reply: dict[str, Any] = {
        "dispatcher": {key: flat_record(record) for key, (_, record) in zip(keys, records, strict=True)}
    }
    if truncated:
        reply["truncated"] = True
    return reply
