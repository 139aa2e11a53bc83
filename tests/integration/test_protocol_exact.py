"""
Protocol exactness: error replies keep the request id, every ``running``
event names ``current_cmd``, ``read_logs`` records are flat as the
original's, a repeated key is refused, and ``success`` is null until a job
has finished.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from conftest import Server, WSClient, with_timeout
from twisted.internet.defer import Deferred

from sysadm_dispatch.core.job import PENDING, RUNNING, Job
from sysadm_dispatch.core.outcome import Outcome
from sysadm_dispatch.core.spec import JobSpec

ensure = pytest_twisted.ensureDeferred


async def call_raw(client: WSClient, request_id: str, data: bytes) -> dict[str, Any]:
    d: Deferred[dict[str, Any]] = Deferred()
    client.replies[request_id] = d
    client.send_raw(data)
    return await with_timeout(d)


async def events_until_finished(client: WSClient, job_id: str) -> list[dict[str, Any]]:
    seen = []
    while True:
        event = (await client.next_event())["args"]
        if event["process_id"] == job_id:
            seen.append(event)
            if event["state"] == "finished":
                return seen


@ensure
async def test_error_replies_to_parsed_messages_keep_their_id(server: Server) -> None:
    client = await server.ws()
    too_long = "x" * 70000
    cases = [
        ({"namespace": "rpc", "name": "dispatcher", "id": "long", "args": {"action": "run", "p": too_long}},
         "65536"),
        ({"namespace": "rpc", "name": "identify", "id": "deep", "args": json.loads("[" * 40 + "]" * 40)},
         "deeper"),
        ({"namespace": "events", "name": "subscribe", "id": "long-key", "args": {too_long: 1}}, "a key of args"),
        ({"namespace": "rpc", "name": "dispatcher", "id": "bad-args", "args": 5}, "args"),
    ]
    for message, needle in cases:
        reply = await call_raw(client, message["id"], json.dumps(message).encode())
        assert reply["name"] == "error" and reply["args"]["code"] == 400, reply
        assert needle in reply["args"]["detail"], reply
        assert reply["namespace"] == message["namespace"], reply
    # An id that is itself over the limit cannot be echoed.
    client.send({"namespace": "rpc", "name": "identify", "id": too_long, "args": {}})
    reply = await client.next_unmatched()
    assert reply["id"] == "" and reply["args"]["code"] == 400, reply


@ensure
async def test_a_repeated_key_answers_400_and_runs_nothing(server: Server, tmp_path: Any) -> None:
    target = tmp_path / "ran"
    body = b'{"action": "list", "action": "run", "p": "touch ' + str(target).encode() + b'"}'
    status, reply, _ = await server.rest(raw=body)
    assert status == 400 and "'action' is given twice" in reply["args"]["detail"], reply
    client = await server.ws()
    message = b'{"namespace": "rpc", "name": "dispatcher", "id": "dup", "args": ' + body + b"}"
    reply = await call_raw(client, "dup", message)
    assert reply["args"]["code"] == 400 and reply["args"]["detail"].startswith("args: the key 'action'"), reply
    nested = (b'{"namespace": "rpc", "name": "dispatcher", "id": "dup2", "args": {"action": "run", "jobs": '
              b'[{"id": "j", "commands": "true", "env": {"A": "1", "A": "2"}}]}}')
    reply = await call_raw(client, "dup2", nested)
    assert reply["args"]["code"] == 400 and reply["args"]["detail"].startswith("args.jobs[0].env: the key 'A'"), reply
    # A repeated id: which one to echo is unknown.
    client.send_raw(b'{"namespace": "rpc", "name": "identify", "id": "a", "id": "b"}')
    reply = await client.next_unmatched()
    assert reply["id"] == "" and reply["args"]["code"] == 400, reply
    status, listed, _ = await server.rest({"action": "list"})
    assert listed["args"]["jobs"] == {} and not target.exists()


@ensure
async def test_every_running_event_names_current_cmd_and_success_is_null_until_finished(make_server) -> None:
    server = await make_server("--update-interval", "0.1")
    client = await server.ws()
    await client.call("subscribe", ["dispatcher"], namespace="events")
    chain = ["sleep 0.3", "sh -c 'echo one; sleep 0.3; echo two'", "true"]
    await server.run({"jobs": [{"id": "first", "commands": "sleep 0.5", "queue": "pkg_queue"},
                               {"id": "chain", "commands": chain, "queue": "pkg_queue"}]})
    events = await events_until_finished(client, "chain")
    states = [e["state"] for e in events]
    assert states[0] == PENDING and states[1] == RUNNING and states[-1] == "finished", states
    for event in events[:-1]:
        assert event.get("success") is None, event
    assert events[-1]["success"] == "true"
    running = [e["process_details"] for e in events if e["state"] == RUNNING]
    assert running[0]["current_cmd"] == "sleep 0.3", running[0]
    assert all(r.get("current_cmd") in chain for r in running), running
    assert any(r["current_cmd"] == chain[1] and r.get(chain[1]) for r in running), running


@ensure
async def test_read_logs_records_carry_the_original_flat_keys(server: Server) -> None:
    await server.run({"flat": ["echo a", "echo b"]})
    finished = await server.wait_finished("flat")
    status, body, _ = await server.rest({"action": "read_logs"}, path="/rpc/logs")
    assert status == 200, body
    [record] = body["args"]["dispatcher"].values()
    for key in ("process_id", "state", "cmd_list", "time_started", "time_finished",
                "echo a", "return_codes/echo a", "echo b", "return_codes/echo b"):
        assert record[key] == finished["process_details"][key], key
    assert record["echo b"] == "b\n" and record["return_codes/echo b"] == "0"
    # Beside today's fields.
    assert record["process_details"] == finished["process_details"]
    assert record["queue"] == "no_queue" and record["success"] == "true" and record["killed"] is False
    status, body, _ = await server.rest({"action": "job", "job_id": "flat"}, path="/rpc/logs")
    assert body["args"]["echo a"] == "a\n" and body["args"]["process_details"]["echo a"] == "a\n", body


def test_current_cmd_from_start_to_end() -> None:
    job = Job(JobSpec("j", ("a", "b"), (("a",), ("b",))), 1024, 0.0)
    assert job.current_cmd is None, "pending"
    job.start(1.0)
    assert job.current_cmd == "a" and job.process_details()["current_cmd"] == "a"
    job.begin_command()
    assert job.current_cmd == "a"
    job.end_command(0)
    assert job.current_cmd == "b", "the next one, about to begin"
    job.begin_command()
    job.end_command(3)
    assert job.current_cmd == "b", "the last one run, while the job winds down"
    assert job.record()["success"] is None
    job.finish(2.0, Outcome.FAILED)
    assert job.current_cmd is None and job.record()["success"] == "false"
