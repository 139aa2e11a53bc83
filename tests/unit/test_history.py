"""
Unit tests for ``sysadm_dispatch.store.history``: reading a ``read_logs`` query
(time formats, defaults, limits) and shaping its reply.  Pure functions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from sysadm_dispatch.store.history import (
    DEFAULT_LIMIT,
    DEFAULT_PERIOD,
    BadQuery,
    LogQuery,
    add_months,
    history_key,
    parse_read_logs,
    read_logs_reply,
)

NOW = datetime(2024, 3, 31, 12, 30, 0).timestamp()


def query(**args: Any) -> LogQuery:
    return parse_read_logs({"action": "read_logs", "logs": "dispatcher", **args}, NOW)


def refused(**args: Any) -> str:
    with pytest.raises(BadQuery) as info:
        query(**args)
    return str(info.value)


def test_defaults_are_the_last_twelve_hours() -> None:
    q = query()
    assert (q.start, q.end, q.limit, q.logs) == (NOW - 12 * 3600, NOW, DEFAULT_LIMIT, ("dispatcher",))
    assert DEFAULT_PERIOD == 43200
    assert parse_read_logs({"action": "read_logs"}, NOW).logs == ("dispatcher",)


@pytest.mark.parametrize(("time_format", "start", "end", "expected"), [
    ("time_t_seconds", "1700000000", "1700003600", (1700000000.0, 1700003600.0)),
    ("time_t_seconds", 1700000000, 1700003600.5, (1700000000.0, 1700003600.5)),
    ("epoch_mseconds", "1700000000123", "1700000001000", (1700000000.123, 1700000001.0)),
    ("relative_second", "-3600", "-60", (NOW - 3600, NOW - 60)),
    ("relative_second", -3600, 0, (NOW - 3600, NOW)),
    ("relative_day", "-2", "-1", (NOW - 2 * 86400, NOW - 86400)),
    ("relative_day", "-0.5", None, (NOW - 43200, NOW)),
    ("relative_month", "-1", "0", (datetime(2024, 2, 29, 12, 30).timestamp(), NOW)),
    ("relative_month", "-13", "-12", (datetime(2023, 2, 28, 12, 30).timestamp(),
                                      datetime(2023, 3, 31, 12, 30).timestamp())),
])
def test_time_formats(time_format: str, start: Any, end: Any, expected: tuple[float, float]) -> None:
    args = {"time_format": time_format, "start_time": start}
    if end is not None:
        args["end_time"] = end
    q = query(**args)
    assert (q.start, q.end) == pytest.approx(expected)


def test_end_alone_takes_the_twelve_hours_before_it() -> None:
    q = query(time_format="relative_second", end_time="-3600")
    assert (q.start, q.end) == (NOW - 3600 - 12 * 3600, NOW - 3600)


def test_months_are_calendar_months() -> None:
    assert add_months(datetime(2024, 1, 31, 8).timestamp(), 1) == datetime(2024, 2, 29, 8).timestamp()
    assert add_months(datetime(2024, 12, 15).timestamp(), 1) == datetime(2025, 1, 15).timestamp()
    assert add_months(datetime(2024, 1, 15).timestamp(), -1) == datetime(2023, 12, 15).timestamp()


@pytest.mark.parametrize(("args", "needle"), [
    ({"time_format": "fortnights", "start_time": "-1"}, "unknown time_format 'fortnights'"),
    ({"time_format": 7}, "unknown time_format 'int'"),
    ({"start_time": "-3600"}, "need a time_format"),
    ({"time_format": "relative_second", "start_time": "an hour ago"}, "start_time 'an hour ago' is not a number"),
    ({"time_format": "relative_second", "end_time": "nan"}, "end_time 'nan' is out of range"),
    ({"time_format": "relative_second", "start_time": True}, "start_time must be a number"),
    ({"time_format": "relative_second", "start_time": ["-1"]}, "start_time must be a number"),
    ({"time_format": "time_t_seconds", "start_time": 10**400}, "is not a number"),
    ({"time_format": "time_t_seconds", "start_time": 1e300}, "out of range"),
    ({"time_format": "relative_month", "start_time": "-1.5"}, "whole number of months"),
    ({"time_format": "relative_month", "start_time": "-99999"}, "whole number of months"),
    ({"time_format": "relative_second", "start_time": "0", "end_time": "-10"}, "start_time is after end_time"),
    ({"limit": 0}, "limit must be a whole number from 1 to 1000"),
    ({"limit": 1001}, "limit must be a whole number from 1 to 1000"),
    ({"limit": True}, "limit must be"),
    ({"limit": 2.5}, "limit must be"),
    ({"logs": "events-dispatcher"}, "no known log named (known: dispatcher)"),
    ({"logs": []}, "logs must be a log name or a non-empty list"),
    ({"logs": 3}, "logs must be a log name"),
])
def test_bad_queries_say_what_is_wrong(args: dict[str, Any], needle: str) -> None:
    assert needle in refused(**args)


def test_limits_and_log_lists() -> None:
    assert query(limit=1).limit == 1
    assert query(limit="1000").limit == 1000
    assert query(logs=["events-dispatcher", "dispatcher"]).logs == ("dispatcher",)


def record(job_id: str) -> dict[str, Any]:
    return {"state": "finished", "process_id": job_id}


def test_reply_keys_are_unique_and_newest_first() -> None:
    t1, t2 = 1700000000.25, 1700000100.5
    # As the store returns them: newest first; "b" and "c" finished in the same microsecond, "c" later.
    records = [(t2, record("c")), (t2, record("b")), (t1, record("a"))]
    reply = read_logs_reply(query(), records, truncated=False)
    assert list(reply) == ["dispatcher"]
    keys = list(reply["dispatcher"])
    assert keys == [history_key(t2) + "#2", history_key(t2), history_key(t1)]
    assert [r["process_id"] for r in reply["dispatcher"].values()] == ["c", "b", "a"]
    assert datetime.fromisoformat(history_key(t1)).timestamp() == t1
    assert datetime.fromisoformat(history_key(t1)).tzinfo is not None
    assert ".250000" in history_key(t1)


def test_three_records_in_one_microsecond() -> None:
    t = 1700000000.0
    reply = read_logs_reply(query(), [(t, record("z")), (t, record("y")), (t, record("x"))], truncated=True)
    assert list(reply["dispatcher"]) == [history_key(t) + "#3", history_key(t) + "#2", history_key(t)]
    assert reply["truncated"] is True
