"""
The job history over the wire (``rpc/logs``, REST and WebSocket), the
history options, and a server's store in trouble: a corrupt database at
startup and a disk that fills up.  A server built by makeService, real
sockets, real processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

import pytest
import pytest_twisted
from conftest import Server, start_server, with_timeout
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from sysadm_dispatch import tap
from sysadm_dispatch.store.history import history_key
from sysadm_dispatch.store.retention import HistoryPruner

ensure = pytest_twisted.ensureDeferred


async def logs(server: Server, args: dict[str, Any], auth: Any = "admin") -> tuple[int, Any]:
    status, body, _ = await server.rest(args, path="/rpc/logs", auth=auth)
    return status, body["args"]


async def run_and_wait(server: Server, *job_ids: str) -> dict[str, dict[str, Any]]:
    await server.run({"jobs": [{"id": job_id, "commands": [f"echo {job_id}"]} for job_id in job_ids]})
    return {job_id: await server.wait_finished(job_id) for job_id in job_ids}


@ensure
async def test_read_logs_over_rest_and_websocket(server: Server) -> None:
    finished = await run_and_wait(server, "a", "b")
    status, reply = await logs(server, {"action": "read_logs", "logs": "dispatcher",
                                        "time_format": "relative_second", "start_time": "-3600"})
    assert status == 200
    assert list(reply) == ["dispatcher"]
    records = reply["dispatcher"]
    assert sorted(r["process_id"] for r in records.values()) == ["a", "b"]
    for key, record in records.items():
        # The finished event's args, under its finish time, and its details flat beside them.
        assert record == {**finished[record["process_id"]]["process_details"], **finished[record["process_id"]]}
        assert key.split("#")[0][:19] == record["process_details"]["time_finished"][:19]
    assert list(records) == sorted(records, reverse=True), "newest first"

    client = await server.ws()
    ws_reply = await client.call("logs", {"action": "read_logs", "logs": ["dispatcher"],
                                          "time_format": "relative_second", "start_time": "-3600"}, id="hist")
    assert ws_reply["name"] == "response" and ws_reply["id"] == "hist"
    assert ws_reply["args"] == reply
    ws_reply = await client.call("logs", {"action": "job", "job_id": "b"})
    assert ws_reply["args"] == {**finished["b"]["process_details"], **finished["b"]}


@ensure
async def test_each_time_format_and_the_default_period(server: Server) -> None:
    finished = await run_and_wait(server, "t")
    now = time.time()

    async def ids(**args: Any) -> list[str]:
        status, reply = await logs(server, {"action": "read_logs", "logs": "dispatcher", **args})
        assert status == 200, reply
        return [r["process_id"] for r in reply["dispatcher"].values()]

    assert await ids() == ["t"]
    assert await ids(time_format="time_t_seconds", start_time=str(int(now - 60)), end_time=str(int(now + 60))) == ["t"]
    assert await ids(time_format="time_t_seconds", start_time=now - 120, end_time=now - 60) == []
    assert await ids(time_format="epoch_mseconds", start_time=str(int((now - 60) * 1000))) == ["t"]
    assert await ids(time_format="epoch_mseconds", end_time=str(int((now - 60) * 1000))) == []
    assert await ids(time_format="relative_second", start_time="-60", end_time="60") == ["t"]
    assert await ids(time_format="relative_second", start_time="-3600", end_time="-60") == []
    assert await ids(time_format="relative_day", start_time="-1") == ["t"]
    assert await ids(time_format="relative_day", end_time="-1") == []
    assert await ids(time_format="relative_month", start_time="-1", end_time="1") == ["t"]
    assert await ids(time_format="relative_month", start_time="-2", end_time="-1") == []
    assert finished["t"]["success"] == "true"


@ensure
async def test_limit_truncated_and_unique_keys(server: Server) -> None:
    await run_and_wait(server, "l1", "l2", "l3")
    status, reply = await logs(server, {"action": "read_logs", "logs": "dispatcher", "limit": 2})
    assert status == 200
    assert reply["truncated"] is True and len(reply["dispatcher"]) == 2
    status, reply = await logs(server, {"action": "read_logs", "logs": "dispatcher", "limit": 3})
    assert "truncated" not in reply and len(reply["dispatcher"]) == 3
    # Records finished at the same instant (here: written so) keep distinct keys.
    store = server.dispatcher.store
    same = time.time() - 1
    for n in range(3):
        await store.finish({"state": "finished", "process_id": f"same{n}", "process_details": {}}, same)
    status, reply = await logs(server, {"action": "read_logs", "logs": "dispatcher", "time_format": "relative_second",
                                        "start_time": "-5", "end_time": "-0.5"})
    keys = list(reply["dispatcher"])
    assert keys == [history_key(same) + "#3", history_key(same) + "#2", history_key(same)]
    assert [r["process_id"] for r in reply["dispatcher"].values()] == ["same2", "same1", "same0"]


@ensure
async def test_latest_record_of_a_job_or_404(server: Server) -> None:
    await run_and_wait(server, "again")
    second = (await run_and_wait(server, "again"))["again"]
    status, reply = await logs(server, {"action": "job", "job_id": "again"})
    assert status == 200 and reply == {**second["process_details"], **second}
    status, reply = await logs(server, {"action": "job", "job_id": "never-ran"})
    assert status == 404
    assert reply["message"] == "Not Found" and "'never-ran'" in reply["detail"]


@ensure
async def test_read_users_may_read_the_history(server: Server) -> None:
    await run_and_wait(server, "seen")
    server.add_user("viewer", "read", "viewpw")
    status, reply = await logs(server, {"action": "job", "job_id": "seen"}, auth=("viewer", "viewpw"))
    assert status == 200 and reply["process_id"] == "seen"
    status, _ = await logs(server, {"action": "read_logs", "logs": "dispatcher"}, auth=("viewer", "viewpw"))
    assert status == 200
    status, _ = await logs(server, {"action": "read_logs"}, auth=None)
    assert status == 401


@pytest.mark.parametrize(("args", "needle"), [
    ([], "logs: args must be an object"),
    ({}, "logs: action is missing"),
    ({"action": "delete_logs"}, "unknown action 'delete_logs'"),
    ({"action": "job"}, "job_id must be a non-empty string"),
    ({"action": "job", "job_id": ["a"]}, "job_id must be a non-empty string"),
    ({"action": "read_logs", "logs": "syslog"}, "no known log named"),
    ({"action": "read_logs", "time_format": "weeks", "start_time": "-1"}, "unknown time_format 'weeks'"),
    ({"action": "read_logs", "time_format": "relative_day", "start_time": "yesterday"}, "start_time 'yesterday'"),
    ({"action": "read_logs", "start_time": "-1"}, "need a time_format"),
    ({"action": "read_logs", "limit": 5000}, "limit must be a whole number from 1 to 1000"),
])
@ensure
async def test_bad_logs_requests_get_400_with_a_detail(server: Server, args: Any, needle: str) -> None:
    status, reply = await logs(server, args)
    assert status == 400, reply
    assert needle in reply["detail"]


def test_history_options() -> None:
    options = tap.Options()
    options.parseOptions(["--state-dir", "/nonexistent"])
    assert options["history-days"] == 30 and options["history-max-jobs"] == 100000
    options = tap.Options()
    options.parseOptions(["--state-dir", "/nonexistent", "--history-days", "7", "--history-max-jobs", "500"])
    assert (options["history-days"], options["history-max-jobs"]) == (7, 500)
    for bad, needle in ((["--history-days", "0"], "--history-days '0' is out of range"),
                        (["--history-max-jobs", "many"], "--history-max-jobs 'many' is not a whole number")):
        with pytest.raises(Exception, match=needle):
            tap.Options().parseOptions(bad)


@ensure
async def test_the_server_prunes_with_its_options(make_server: Any) -> None:
    server = await make_server("--history-days", "3", "--history-max-jobs", "2")
    [pruner] = [s for s in server.service if isinstance(s, HistoryPruner)]
    assert (pruner.days, pruner.max_jobs) == (3, 2)
    for job_id in ("p1", "p2", "p3"):
        await run_and_wait(server, job_id)
    assert await with_timeout(pruner.prune()) == 1
    status, reply = await logs(server, {"action": "read_logs", "logs": "dispatcher"})
    assert sorted(r["process_id"] for r in reply["dispatcher"].values()) == ["p2", "p3"]


# A store in trouble.


def capture(level: LogLevel) -> tuple[list[str], Any]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == level:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    return lines, observe


@ensure
async def test_a_corrupt_database_is_moved_aside_at_startup(tmp_path: Any) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / tap.STORE_FILE).write_bytes(b"\x00garbage, not SQLite\n" * 100)
    critical, observer = capture(LogLevel.critical)
    try:
        server = await start_server(str(state))
    finally:
        globalLogPublisher.removeObserver(observer)
    try:
        [moved] = [p for p in os.listdir(state) if p.startswith(tap.STORE_FILE + ".corrupt-")]
        assert (state / moved).read_bytes() == b"\x00garbage, not SQLite\n" * 100
        assert any("CORRUPT OR UNREADABLE" in line and moved in line for line in critical), critical
        await run_and_wait(server, "fresh")
        status, reply = await logs(server, {"action": "job", "job_id": "fresh"})
        assert status == 200 and reply["success"] == "true"
    finally:
        await server.stop()


@pytest.fixture
def small_disk(tmp_path: Any) -> Any:
    """A 2 MiB tmpfs (root only; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                            capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Any) -> None:
    """Write ``path`` until the disk is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@ensure
async def test_a_full_disk_answers_503_and_acknowledges_nothing(small_disk: Any) -> None:
    server = await start_server(str(small_disk / "state"))
    try:
        await run_and_wait(server, "before")
        status, before = await logs(server, {"action": "job", "job_id": "before"})
        assert status == 200
        fill(small_disk / "filler")
        status, body, _ = await server.rest({"action": "run", "jobs": [{"id": "refused", "commands": "echo no"}]})
        assert status == 503, body
        assert body["args"]["message"] == "Service Unavailable"
        assert "disk is full" in body["args"]["detail"] and "no job of this request was queued" in body["args"]["detail"]
        _, listed, _ = await server.rest({"action": "list"})
        assert listed["args"]["jobs"] == {}
        # Reading still works, and the server keeps serving.
        assert await logs(server, {"action": "job", "job_id": "before"}) == (200, before)
        os.unlink(small_disk / "filler")
        finished = await run_and_wait(server, "refused")
        assert finished["refused"]["success"] == "true"
    finally:
        await server.stop()
