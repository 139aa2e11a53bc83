"""
Unit tests for ``sysadm_dispatch.core.job``: reading ``run`` requests, the capped
per-command log, and the views of a job that go on the wire.  Pure state: no
reactor, no processes.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sysadm_dispatch.core import job as job_module
from sysadm_dispatch.core.job import FINISHED, PENDING, RUNNING, Job, iso_time, positions
from sysadm_dispatch.core.log import CappedLog
from sysadm_dispatch.core.outcome import KillRequest, Outcome, decide
from sysadm_dispatch.core.spec import (
    DEFAULT_QUEUES,
    NO_QUEUE,
    InvalidJob,
    JobSpec,
    Limits,
    make_job_id,
    specs_from_run_args,
    split_words,
)
from sysadm_dispatch.process.result import RunResult

QUEUES = tuple(DEFAULT_QUEUES)
#: 2016-02-02T13:45:13Z, the time in the protocol's example event.
T0 = 1454420713.0
GENERATED_ID = re.compile(r"^(?P<queue>[a-z_]+)-\{(?P<uuid>[0-9a-f-]{36})\}$")
MARKER = re.compile(rb"\n\[sysadm-dispatch: (\d+) bytes of output dropped here\]\n")


def run(args: dict[str, Any], limits: Limits = Limits()) -> list[JobSpec]:
    return specs_from_run_args({"action": "run", **args}, QUEUES, limits)


def invalid(args: dict[str, Any], limits: Limits = Limits()) -> str:
    with pytest.raises(InvalidJob) as info:
        run(args, limits)
    return str(info.value)


# specs_from_run_args: the compatible form.


def test_compatible_form_string_and_chain() -> None:
    specs = run({"procID1": "echo sample1", "procID2": ["echo chainCmd1", "echo chainCmd2"]})
    assert specs == [
        JobSpec("procID1", ("echo sample1",), (("echo", "sample1"),), NO_QUEUE),
        JobSpec("procID2", ("echo chainCmd1", "echo chainCmd2"), (("echo", "chainCmd1"), ("echo", "chainCmd2")), NO_QUEUE),
    ]
    assert all(s.cwd is None and s.env == {} and s.timeout is None for s in specs)


def test_compatible_form_splits_by_shell_rules_without_a_shell() -> None:
    [spec] = run({"x": """printf '%s\\n' "a b" c\\ d | tee && x"""})
    assert spec.argvs == (("printf", "%s\\n", "a b", "c d", "|", "tee", "&&", "x"),)


def test_compatible_form_action_key_is_not_a_job() -> None:
    assert [s.id for s in run({"a": "true"})] == ["a"]


def test_compatible_job_named_jobs_with_a_list_of_strings() -> None:
    # A list of strings under "jobs" is a compatible chain named "jobs", not the extended form.
    [spec] = run({"jobs": ["echo 1", "echo 2"]})
    assert (spec.id, spec.commands, spec.queue) == ("jobs", ("echo 1", "echo 2"), NO_QUEUE)


# specs_from_run_args: the extended form.


def test_extended_form_all_fields() -> None:
    env = {"LANG": "C"}
    [spec] = run({"jobs": [{"id": "upgrade-1", "commands": ["pkg upgrade -y"], "queue": "pkg_queue",
                            "cwd": "/tmp", "env": env, "timeout": 600}]})
    assert spec == JobSpec("upgrade-1", ("pkg upgrade -y",), (("pkg", "upgrade", "-y"),), "pkg_queue", "/tmp",
                           {"LANG": "C"}, 600.0)
    assert type(spec.timeout) is float
    env["LANG"] = "changed"
    assert spec.env == {"LANG": "C"}, "the spec must not share the request's env dict"


def test_extended_form_defaults() -> None:
    [spec] = run({"jobs": [{"id": "a", "commands": "true"}]})
    assert (spec.queue, spec.cwd, spec.env, spec.timeout, spec.commands) == (NO_QUEUE, None, {}, None, ("true",))
    [spec] = run({"jobs": [{"id": "a", "commands": "true", "env": None, "cwd": None, "timeout": None}]})
    assert (spec.cwd, spec.env, spec.timeout) == (None, {}, None)


def test_extended_form_fractional_timeout() -> None:
    [spec] = run({"jobs": [{"commands": "true", "timeout": 0.5}]})
    assert spec.timeout == 0.5


@pytest.mark.parametrize("queue", QUEUES)
def test_generated_ids(queue: str) -> None:
    specs = run({"jobs": [{"commands": "true", "queue": queue}, {"commands": "true", "queue": queue}]})
    ids = [s.id for s in specs]
    assert ids[0] != ids[1]
    for job_id in ids:
        match = GENERATED_ID.match(job_id)
        assert match, job_id
        assert match["queue"] == queue
        assert uuid.UUID(match["uuid"]).version == 4
        assert job_id == f"{queue}-{{{uuid.UUID(match['uuid'])}}}"


def test_make_job_id() -> None:
    match = GENERATED_ID.match(make_job_id("pkg_queue"))
    assert match and match["queue"] == "pkg_queue" and uuid.UUID(match["uuid"]).version == 4


# specs_from_run_args: every validation failure names the job.


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"x": []}, ["job 'x'", "must not be empty"]),
        ({"x": ""}, ["job 'x'", "empty"]),
        ({"x": "   "}, ["job 'x'", "empty"]),
        ({"x": ["echo a", ""]}, ["job 'x'", "empty"]),
        ({"x": 3}, ["job 'x'", "string or a list of strings"]),
        ({"x": None}, ["job 'x'", "string or a list of strings"]),
        ({"x": {"cmd": "echo"}}, ["job 'x'", "string or a list of strings"]),
        ({"x": ["echo a", 3]}, ["job 'x'", "string or a list of strings"]),
        ({"x": ["echo a", ["echo b"]]}, ["job 'x'", "string or a list of strings"]),
        ({"x": 'echo "unclosed'}, ["job 'x'", "cannot be split", "echo \"unclosed"]),
        ({"x": ["true", "echo 'unclosed"]}, ["job 'x'", "cannot be split"]),
        ({"x": "echo a\x00b"}, ["job 'x'", "NUL"]),
        ({"a\nb": "true"}, ["job 'a\\nb'", "control characters"]),
        ({"": "true"}, ["non-empty string"]),
        ({"jobs": [{"id": "x", "commands": []}]}, ["job 'x'", "must not be empty"]),
        ({"jobs": [{"id": "x"}]}, ["job 'x'", "commands are missing"]),
        ({"jobs": [{"id": "x", "commands": [1]}]}, ["job 'x'", "string or a list of strings"]),
        ({"jobs": [{"id": "x", "commands": 'echo "unclosed'}]}, ["job 'x'", "cannot be split"]),
        ({"jobs": [{"id": "x", "commands": "true", "queue": "nope"}]},
         ["job 'x'", "unknown queue 'nope'", "iocage_queue, no_queue, pkg_queue"]),
        ({"jobs": [{"id": "x", "commands": "true", "queue": 1}]}, ["job 'x'", "queue must be a string"]),
        ({"jobs": [{"id": "x", "commands": "true", "cwd": 3}]}, ["job 'x'", "cwd"]),
        ({"jobs": [{"id": "x", "commands": "true", "cwd": ""}]}, ["job 'x'", "cwd"]),
        ({"jobs": [{"id": "x", "commands": "true", "cwd": ["/tmp"]}]}, ["job 'x'", "cwd"]),
        ({"jobs": [{"id": "x", "commands": "true", "env": []}]}, ["job 'x'", "env"]),
        ({"jobs": [{"id": "x", "commands": "true", "env": "A=1"}]}, ["job 'x'", "env"]),
        ({"jobs": [{"id": "x", "commands": "true", "env": {"A": 1}}]}, ["job 'x'", "env", "'A'"]),
        ({"jobs": [{"id": "x", "commands": "true", "env": {"A": None}}]}, ["job 'x'", "env", "'A'"]),
        ({"jobs": [{"id": "x", "commands": "true", "env": {"A=B": "1"}}]}, ["job 'x'", "env", "'A=B'"]),
        ({"jobs": [{"id": "x", "commands": "true", "env": {"": "1"}}]}, ["job 'x'", "env"]),
        ({"jobs": [{"id": "x", "commands": "true", "timeout": "5"}]}, ["job 'x'", "timeout"]),
        ({"jobs": [{"id": "x", "commands": "true", "timeout": True}]}, ["job 'x'", "timeout"]),
        ({"jobs": [{"id": "x", "commands": "true", "timeout": 0}]}, ["job 'x'", "timeout"]),
        ({"jobs": [{"id": "x", "commands": "true", "timeout": -1}]}, ["job 'x'", "timeout"]),
        ({"jobs": [{"id": "x", "commands": "true", "timeout": float("inf")}]}, ["job 'x'", "timeout"]),
        ({"jobs": [{"id": "x", "commands": "true", "timeout": [5]}]}, ["job 'x'", "timeout"]),
        ({"jobs": [{"id": "x", "commands": "true", "bogus": 1}]}, ["job 'x'", "unknown key 'bogus'"]),
        ({"jobs": [{"id": "x", "commands": "true", "id ": "y"}]}, ["job 'x'", "unknown key 'id '"]),
        ({"jobs": [{"id": "", "commands": "true"}]}, ["non-empty string"]),
        ({"jobs": [{"commands": "true"}, 3]}, ["jobs[1]", "object"]),
        ({"jobs": [{"commands": "true", "bogus": 1}]}, ["jobs[0]", "unknown key 'bogus'"]),
        ({"jobs": [{"commands": "true", "queue": "nope"}]}, ["jobs[0]", "unknown queue 'nope'"]),
    ],
)
def test_invalid_job(args: dict[str, Any], expected: list[str]) -> None:
    detail = invalid(args)
    for part in expected:
        assert part in detail, (part, detail)


def test_duplicate_id_compatible_and_extended() -> None:
    # A dict cannot hold a key twice, so a compatible request can only repeat an id through "jobs".
    detail = invalid({"jobs": [{"id": "x", "commands": "true"}, {"id": "y", "commands": "true"},
                               {"id": "x", "commands": "false"}]})
    assert "job 'x'" in detail and "twice" in detail


def test_extended_form_takes_no_other_keys() -> None:
    detail = invalid({"jobs": [{"id": "x", "commands": "true"}], "y": "echo"})
    assert "'y'" in detail


@pytest.mark.parametrize("args", [{}, {"jobs": []}])
def test_no_jobs(args: dict[str, Any]) -> None:
    assert "no jobs" in invalid(args)


def test_the_first_bad_job_fails_the_whole_request() -> None:
    detail = invalid({"good": "true", "bad": 'echo "x', "also_good": "true"})
    assert "job 'bad'" in detail


def test_too_many_jobs() -> None:
    limits = Limits(max_jobs_per_run=2)
    assert len(run({"a": "true", "b": "true"}, limits)) == 2
    assert "at most 2 jobs" in invalid({"a": "true", "b": "true", "c": "true"}, limits)
    assert len(run({"jobs": [{"commands": "true"}] * 2}, limits)) == 2
    assert "at most 2 jobs" in invalid({"jobs": [{"commands": "true"}] * 3}, limits)


def test_too_many_commands() -> None:
    limits = Limits(max_commands=2)
    assert len(run({"a": ["true"] * 2}, limits)[0].commands) == 2
    detail = invalid({"a": ["true"] * 3}, limits)
    assert "job 'a'" in detail and "at most 2 commands" in detail
    detail = invalid({"jobs": [{"id": "b", "commands": ["true"] * 3}]}, limits)
    assert "job 'b'" in detail and "at most 2 commands" in detail


def test_default_limits_match_the_protocol() -> None:
    limits = Limits()
    assert (limits.max_jobs_per_run, limits.max_commands) == (1000, 256)
    assert len(run({"a": ["true"] * 256})[0].commands) == 256
    assert "at most 256" in invalid({"a": ["true"] * 257})


def test_too_long_command_and_id() -> None:
    limits = Limits(max_command_chars=10, max_id_chars=5)
    assert run({"abcde": "echo 1234"}, limits)[0].id == "abcde"
    assert "job 'a'" in invalid({"a": "echo 123456"}, limits)
    assert "at most 5 characters" in invalid({"abcdef": "true"}, limits)


def test_job_without_id_is_named_by_its_index() -> None:
    detail = invalid({"jobs": [{"commands": "true"}, {"commands": ""}]})
    assert "jobs[1]" in detail, detail


def test_job_with_non_string_id_is_named_by_its_index() -> None:
    detail = invalid({"jobs": [{"id": "ok", "commands": "true"}, {"id": 5, "commands": "true"}]})
    assert "jobs[1]" in detail, detail


def test_non_string_env_name_is_invalid_job() -> None:
    with pytest.raises(InvalidJob, match="env"):
        run({"jobs": [{"id": "x", "commands": "true", "env": {1: "x"}}]})


# CappedLog.


def naive_capped(data: bytes, cap: int) -> bytes:
    if len(data) <= cap:
        return data
    head, tail = cap // 2, cap - cap // 2
    marker = f"\n[sysadm-dispatch: {len(data) - cap} bytes of output dropped here]\n".encode()
    return data[:head] + marker + (data[len(data) - tail:] if tail else b"")


@pytest.mark.parametrize("size", [0, 1, 99, 100])
def test_capped_log_under_cap_is_exact(size: int) -> None:
    data = bytes(range(size))
    log = CappedLog(100)
    log.write(data)
    assert log.getvalue() == data
    assert log.dropped == 0 and log.total == size
    assert MARKER.search(log.getvalue()) is None


def test_capped_log_over_cap_keeps_halves_and_counts_the_drop() -> None:
    data = b"".join(b"%04d" % i for i in range(1000))  # 4000 bytes
    log = CappedLog(100)
    log.write(data)
    value = log.getvalue()
    match = MARKER.search(value)
    assert match and int(match[1]) == 3900 == log.dropped
    assert value[: match.start()] == data[:50]
    assert value[match.end():] == data[-50:]
    assert log.total == 4000


def test_capped_log_odd_cap() -> None:
    log = CappedLog(7)
    log.write(b"abcdefghij")
    assert log.getvalue() == b"abc" + b"\n[sysadm-dispatch: 3 bytes of output dropped here]\n" + b"ghij"


def test_capped_log_one_byte_over() -> None:
    log = CappedLog(4)
    log.write(b"12345")
    assert log.getvalue() == b"12\n[sysadm-dispatch: 1 bytes of output dropped here]\n45"


def test_capped_log_small_writes_equal_one_big_write() -> None:
    data = bytes(i % 251 for i in range(10_000))
    big, small, mixed = CappedLog(1000), CappedLog(1000), CappedLog(1000)
    big.write(data)
    for i in range(len(data)):
        small.write(data[i: i + 1])
    for start in range(0, len(data), 333):
        mixed.write(data[start: start + 333])
    assert big.getvalue() == small.getvalue() == mixed.getvalue() == naive_capped(data, 1000)
    assert big.dropped == small.dropped == mixed.dropped == 9000


def test_capped_log_output_stays_bounded() -> None:
    log = CappedLog(64)
    for _ in range(20_000):
        log.write(b"0123456789")
    assert log.total == 200_000
    assert len(log.getvalue()) < 64 + 80


def test_capped_log_text_replaces_invalid_utf8() -> None:
    log = CappedLog(100)
    log.write("héllo ".encode() + b"\xff\xfe")
    assert log.text() == "héllo \ufffd\ufffd"


@settings(database=None, max_examples=300, deadline=None)
@given(cap=st.integers(min_value=0, max_value=64), chunks=st.lists(st.binary(max_size=80), max_size=12))
def test_capped_log_matches_naive_model(cap: int, chunks: list[bytes]) -> None:
    log = CappedLog(cap)
    for chunk in chunks:
        log.write(chunk)
    data = b"".join(chunks)
    assert log.getvalue() == naive_capped(data, cap)
    assert log.total == len(data)
    assert log.dropped == max(0, len(data) - cap)


# Job views.


def make_job(commands: tuple[str, ...] = ("echo a", "echo b"), queue: str = "pkg_queue", job_id: str = "j1") -> Job:
    spec = JobSpec(job_id, commands, tuple(tuple(c.split()) for c in commands), queue)
    return Job(spec, log_cap=1 << 20, now=T0)


def finish_all(job: Job, codes: list[int], outputs: list[bytes] | None = None) -> Job:
    job.start(T0 + 1)
    for index, code in enumerate(codes):
        log = job.begin_command()
        log.write((outputs or [b""] * len(codes))[index])
        job.end_command(code)
    job.finish(T0 + 2, decide(len(job.spec.commands), job.return_codes, RunResult(), None))
    return job


def test_iso_time() -> None:
    assert iso_time(None) is None
    text = iso_time(T0)
    assert text is not None
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None, "the time must carry its UTC offset"
    assert parsed.timestamp() == T0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", text), text


def test_list_entry_pending_numbered() -> None:
    job = make_job(("pkg install -y foo",))
    assert job.list_entry("1") == {
        "commands": ["pkg install -y foo"],
        "state": PENDING,
        "queue_position": "1",
        "queue": "pkg_queue",
        "time_queued": iso_time(T0),
    }


def test_list_entry_no_queue_has_no_position() -> None:
    job = make_job(("sleep 30",), queue=NO_QUEUE)
    entry = job.list_entry(None)
    assert "queue_position" not in entry
    assert entry["commands"] == ["sleep 30"] and entry["queue"] == NO_QUEUE


def test_list_entry_running() -> None:
    job = make_job()
    job.start(T0 + 5)
    entry = job.list_entry("0")
    assert entry["state"] == RUNNING and entry["queue_position"] == "0"
    assert entry["time_started"] == iso_time(T0 + 5)
    assert entry["current_cmd"] == "echo a", "about to begin"
    job.begin_command()
    assert job.list_entry("0")["current_cmd"] == "echo a"
    job.end_command(0)
    assert job.list_entry("0")["current_cmd"] == "echo b", "the next, about to begin"
    job.begin_command()
    assert job.list_entry("0")["current_cmd"] == "echo b"
    json.dumps(job.list_entry("0"), allow_nan=False)


def test_process_details_pending() -> None:
    assert make_job().process_details() == {"process_id": "j1", "state": PENDING, "cmd_list": ["echo a", "echo b"]}


def test_process_details_running() -> None:
    job = make_job()
    job.start(T0 + 1)
    job.begin_command().write(b"a\n")
    job.end_command(0)
    job.begin_command().write(b"partial")
    assert job.process_details() == {
        "process_id": "j1",
        "state": RUNNING,
        "cmd_list": ["echo a", "echo b"],
        "time_started": iso_time(T0 + 1),
        "current_cmd": "echo b",
        "echo a": "a\n",
        "return_codes/echo a": "0",
        "echo b": "partial",
    }


def test_process_details_finished() -> None:
    job = finish_all(make_job(), [0, 3], [b"a\n", b"b\n"])
    details = job.process_details()
    assert details == {
        "process_id": "j1",
        "state": FINISHED,
        "cmd_list": ["echo a", "echo b"],
        "time_started": iso_time(T0 + 1),
        "time_finished": iso_time(T0 + 2),
        "echo a": "a\n",
        "return_codes/echo a": "0",
        "echo b": "b\n",
        "return_codes/echo b": "3",
    }
    assert all(isinstance(v, str) for k, v in details.items() if k.startswith("return_codes/"))


def test_process_details_stopped_chain_has_no_code_for_unrun_commands() -> None:
    job = finish_all(make_job(("false", "echo never")), [1])
    details = job.process_details()
    assert details["return_codes/false"] == "1"
    assert "echo never" not in details and "return_codes/echo never" not in details


def test_process_details_repeated_command() -> None:
    job = finish_all(make_job(("echo x", "echo x")), [0, 2], [b"one\n", b"two\n"])
    details = job.process_details()
    assert details["echo x"] == "one\ntwo\n"
    assert details["return_codes/echo x"] == "2"


def test_process_details_uses_the_capped_log() -> None:
    job = make_job(("yes",))
    job.log_cap = 10
    job.start(T0)
    job.begin_command().write(b"y\n" * 100)
    assert "190 bytes of output dropped" in job.process_details()["yes"]


def test_record_fields() -> None:
    job = finish_all(make_job(), [0, 0], [b"a\n", b"b\n"])
    record = job.record()
    assert record == {
        "state": FINISHED,
        "process_id": "j1",
        "process_details": job.process_details(),
        "queue": "pkg_queue",
        "success": "true",
        "killed": False,
        "timed_out": False,
        "interrupted": False,
        "signal": None,
        "escalated": False,
        "submitted_by": None,
        "killed_by": None,
    }
    json.dumps(record, allow_nan=False)


def test_record_uses_given_details() -> None:
    job = make_job()
    assert job.record({"process_id": "j1", "x": "y"})["process_details"] == {"process_id": "j1", "x": "y"}


def test_record_of_a_killed_job() -> None:
    job = make_job()
    job.start(T0)
    job.begin_command()
    assert job.request_kill("alice")
    assert job.record()["killed"] is True and job.record()["killed_by"] == "alice", "asked, while it winds down"
    job.end_command(143)
    job.finish(T0 + 1, Outcome.KILLED, signal="SIGTERM")
    record = job.record()
    assert (record["success"], record["killed"], record["signal"]) == ("false", True, "SIGTERM")
    assert record["killed_by"] == "alice"


@pytest.mark.parametrize(
    ("codes", "flag", "success"),
    [
        ([0, 0], None, True),
        ([0, 1], None, False),
        ([1], None, False),
        ([0], None, False),  # the chain stopped before its last command
        ([0, 0], "killed", False),
        ([0, 0], "timed_out", False),
        ([0, 0], "interrupted", False),
        ([0, -9], None, False),
    ],
)
def test_success_rules(codes: list[int], flag: str | None, success: bool) -> None:
    result, request = {
        None: (RunResult(), None),
        "killed": (RunResult("killed"), KillRequest("alice")),
        "timed_out": (RunResult("timed_out"), None),
        "interrupted": (RunResult("killed"), KillRequest("shutdown", shutdown=True)),
    }[flag]
    job = make_job()
    job.start(T0 + 1)
    for code in codes:
        job.begin_command()
        job.end_command(code)
    job.finish(T0 + 2, decide(len(job.spec.commands), job.return_codes, result, request))
    assert job.success is success
    flags = {name: job.record()[name] for name in ("killed", "timed_out", "interrupted")}
    assert flags == {name: name == flag for name in flags}
    assert job.record()["success"] == ("true" if success else "false")


def test_not_finished_is_not_success() -> None:
    job = make_job()
    assert job.success is False
    job.start(T0)
    for _ in range(2):
        job.begin_command()
        job.end_command(0)
    assert job.success is False, "all commands ended but the job has not finished"


# positions().


def test_positions_numbered() -> None:
    jobs = [make_job(job_id=f"j{i}") for i in range(4)]
    jobs[0].start(T0)
    assert [(j.id, p) for j, p in positions(jobs, numbered=True)] == [("j0", "0"), ("j1", "1"), ("j2", "2"),
                                                                      ("j3", "3")]


def test_positions_all_pending_start_at_one() -> None:
    jobs = [make_job(job_id=f"j{i}") for i in range(2)]
    assert [p for _, p in positions(jobs, numbered=True)] == ["1", "2"]


def test_positions_several_running() -> None:
    jobs = [make_job(job_id=f"j{i}") for i in range(4)]
    jobs[0].start(T0)
    jobs[1].start(T0)
    assert [p for _, p in positions(jobs, numbered=True)] == ["0", "0", "1", "2"]


def test_positions_unnumbered() -> None:
    jobs = [make_job(job_id=f"j{i}", queue=NO_QUEUE) for i in range(3)]
    jobs[0].start(T0)
    assert positions(jobs, numbered=False) == [(jobs[0], None), (jobs[1], None), (jobs[2], None)]


# Splitting and time formatting, the quick ways.

_SHELL_TEXT = st.text(alphabet=st.sampled_from(list("ab=$*#|;&~ \t\r\n\x0b\x0c\x1c\x85\xa0\u2003'\"\\")), max_size=16)


@settings(max_examples=3000, deadline=None)
@given(_SHELL_TEXT)
def test_split_words_is_shlex_split(command: str) -> None:
    try:
        expected: Any = shlex.split(command)
    except ValueError:
        expected = ValueError
    try:
        got: Any = split_words(command)
    except ValueError:
        got = ValueError
    assert got == expected


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_iso_time_is_the_local_second_with_its_offset(t: float) -> None:
    expected = datetime.fromtimestamp(int(t)).astimezone().isoformat(timespec="seconds")
    assert iso_time(t) == expected
    assert iso_time(t) == expected  # and again, from what it keeps


def test_iso_time_keeps_only_a_few_seconds() -> None:
    for second in range(1000):
        iso_time(float(second))
    assert 0 < len(job_module._iso_seconds) <= job_module._ISO_CACHE
