"""
``rpc/logs {"action": "job"}`` for pending and running jobs: the live
record, and a client that joins late following a job's output without
gaps or duplicates (subscribe, fetch the record, apply the ``running``
updates numbered after it).
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from conftest import Server, WSClient, poll

from sysadm_dispatch.core.job import Job
from sysadm_dispatch.core.spec import JobSpec

ensure = pytest_twisted.ensureDeferred


async def live(server: Server, job_id: str) -> dict[str, Any]:
    status, body, _ = await server.rest({"action": "job", "job_id": job_id}, path="/rpc/logs")
    assert status == 200, body
    return dict(body["args"])


@ensure
async def test_the_live_record_of_pending_and_running_jobs(make_server) -> None:
    server = await make_server("--update-interval", "0.1")
    watcher = await server.ws()
    await watcher.call("subscribe", ["dispatcher"], namespace="events")
    first = "sh -c 'echo one; exit 0'"
    second = "sh -c 'echo two; sleep 30'"
    await server.run({"jobs": [{"id": "busy", "commands": [first, second], "queue": "pkg_queue"},
                               {"id": "later", "commands": "true", "queue": "pkg_queue"}]})
    record = await live(server, "later")
    assert record["state"] == "pending" and record["process_id"] == "later", record
    assert record["cmd_list"] == ["true"] and record["process_details"]["cmd_list"] == ["true"], record
    assert record["success"] is None and record["killed_by"] is None
    # Once "two" has gone out in an update, the live record holds all of it.
    while True:
        event = (await watcher.next_event())["args"]
        if event["process_id"] == "busy" and "two" in event["process_details"].get(second, ""):
            break
    record = await live(server, "busy")
    assert record["state"] == "running" and record["current_cmd"] == second, record
    assert record[first] == "one\n" and record["return_codes/" + first] == "0", record
    assert record[second] == "two\n" and "return_codes/" + second not in record, record
    assert record["update"] >= 1 and record["update"] == event["update"], (record, event)
    assert record["time_started"] and "time_finished" not in record
    # Read users may look too; an unknown job is still 404.
    server.add_user("reader", "read", "reader-password-1")
    status, body, _ = await server.rest({"action": "job", "job_id": "busy"}, path="/rpc/logs",
                                        auth=("reader", "reader-password-1"))
    assert status == 200 and body["args"]["state"] == "running"
    status, body, _ = await server.rest({"action": "job", "job_id": "nobody"}, path="/rpc/logs")
    assert status == 404, body
    await server.rest({"action": "kill", "job_id": ["busy", "later"]})


async def follow(server: Server, client: WSClient, job_id: str, command: str) -> tuple[str, str, str]:
    """
    Join late: subscribe, fetch the live record, then apply the updates
    after it.  Returns the output at joining, the output followed up to the
    finished event (which carries the whole log), and that whole log.
    """
    await client.call("subscribe", ["dispatcher"], namespace="events")
    reply = await client.call("logs", {"action": "job", "job_id": job_id})
    record = reply["args"]
    if record["state"] == "finished":
        return record[command], record[command], record[command]
    text = joined = record.get(command, "")
    seen = record.get("update", -1)
    while True:
        event = (await client.next_event())["args"]
        if event["process_id"] != job_id:
            continue
        if event["state"] == "finished":
            return joined, text, event["process_details"][command]
        if event["state"] == "running" and event["update"] > seen:
            assert event["update"] == seen + 1, "updates are numbered without gaps"
            seen = event["update"]
            text += event["process_details"].get(command, "")


def printed(server: Server, job_id: str) -> float:
    """Bytes the job has printed so far (infinite once it has finished)."""
    job = server.dispatcher.jobs.get(job_id)
    if job is None:
        return float("inf")
    return job.logs[0].total if job.logs else 0


@ensure
async def test_late_joiners_see_the_whole_output_once(make_server) -> None:
    server = await make_server("--update-interval", "0.05")
    command = "sh -c 'i=0; while [ $i -lt 40 ]; do echo line $i; i=$((i+1)); sleep 0.04; done'"
    [job_id] = await server.run({"jobs": [{"id": "talker", "commands": [command]}]})
    results = []
    for n in range(4):
        client = await server.ws()
        await poll(lambda n=n: printed(server, job_id) >= 60 * n)
        results.append(await follow(server, client, job_id, command))
    whole = "".join(f"line {i}\n" for i in range(40))
    for joined, followed, final in results:
        # No gap and no duplicate: what was followed is the start of the log.
        assert final == whole and final.startswith(followed), (joined, followed)
        assert followed.startswith(joined), (joined, followed)
    assert any(joined and len(followed) > len(joined) for joined, followed, _ in results), \
        "someone joined after some output and followed more of it"


def test_live_record_is_the_output_up_to_the_last_update() -> None:
    job = Job(JobSpec("j", ("a", "b"), (("a",), ("b",))), 1 << 20, 0.0)
    assert job.live_record()["state"] == "pending" and "update" not in job.live_record()
    job.start(1.0)
    assert job.live_record()["update"] == 0 and job.record()["update"] == 0
    job.begin_command().write(b"one\n")
    assert job.live_record()["process_details"].get("a", "") == "", "not in an update yet"
    update = job.record(job.running_update())
    assert update["update"] == 1 and update["process_details"]["a"] == "one\n"
    job.logs[0].write("tw\u00e9".encode()[:-1])  # an incomplete character is held back
    job.end_command(0)
    job.begin_command().write(b"x")
    record = job.live_record()
    assert record["process_details"]["a"] == "one\n" and record["update"] == 1
    assert record["process_details"]["return_codes/a"] == "0"
    update = job.record(job.running_update())
    assert update["update"] == 2 and update["process_details"]["a"] == "tw\ufffd" and update["process_details"]["b"] == "x"
    assert job.live_record()["process_details"]["a"] == "one\ntw\ufffd"
