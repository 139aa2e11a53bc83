"""
Strings that cannot be encoded as UTF-8 (a lone surrogate escape such as
``\\udc00`` in the JSON) are refused at validation, 400 naming the field,
before anything is recorded; and a job that cannot be started, for any
reason, still finishes cleanly.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from conftest import Server, WSClient, poll, with_timeout
from twisted.internet.defer import Deferred

from sysadm_dispatch.api.router import RPCError, decode_json
from sysadm_dispatch.core.spec import InvalidJob, specs_from_run_args

ensure = pytest_twisted.ensureDeferred

LONE = "\udc00"


def raw(message: Any) -> bytes:
    """JSON text with lone surrogates as ``\\uXXXX`` escapes (what ``json.dumps`` writes for them)."""
    text = json.dumps(message)
    assert "\\udc00" in text or "\\ud800" in text
    return text.encode()


async def call_raw(client: WSClient, request_id: str, data: bytes) -> dict[str, Any]:
    d: Deferred[dict[str, Any]] = Deferred()
    client.replies[request_id] = d
    client.send_raw(data)
    return await with_timeout(d)


# The decoder, on its own.


@pytest.mark.parametrize(("message", "field"), [
    ({"args": {"action": "run", "p1": "echo " + LONE}}, "args.p1"),
    ({"args": {"action": "run", LONE: "echo hi"}}, "a key of args"),
    ({"args": {"jobs": [{"commands": ["true", "echo \ud800"]}]}}, "args.jobs[0].commands[1]"),
    ({"args": {"jobs": [{"commands": "true", "env": {"A": LONE}}]}}, "args.jobs[0].env.A"),
    ({"args": {"username": "admin", "password": "x" + LONE}}, "args.password"),
    ({"id": LONE}, "id"),
])
def test_decoder_names_the_field_holding_a_lone_surrogate(message: dict[str, Any], field: str) -> None:
    with pytest.raises(RPCError) as e:
        decode_json(raw(message))
    assert e.value.code == 400
    assert field in e.value.detail and "Unicode" in e.value.detail, e.value.detail


def test_decoder_accepts_surrogate_pairs_and_escaped_backslashes() -> None:
    assert decode_json(b'{"a": "\\ud83d\\ude00", "b": "\\\\udc00"}') == {"a": "\U0001f600", "b": "\\udc00"}


def test_run_validation_refuses_text_that_is_not_unicode_whatever_the_caller() -> None:
    queues = {"no_queue": 0, "q" + LONE: 0}
    cases = [
        ({"action": "run", "p1": "echo " + LONE}, "job 'p1'"),
        ({"action": "run", "a" + LONE: "true"}, "job id"),
        ({"jobs": [{"id": "j", "commands": "true", "cwd": "/tmp" + LONE}]}, "cwd"),
        ({"jobs": [{"id": "j", "commands": "true", "env": {"A" + LONE: "1"}}]}, "env name"),
        ({"jobs": [{"id": "j", "commands": "true", "env": {"A": LONE}}]}, "env value"),
        ({"jobs": [{"id": "j", "commands": "true", "queue": "q" + LONE}]}, "queue"),
    ]
    for args, what in cases:
        with pytest.raises(InvalidJob) as e:
            specs_from_run_args(args, queues)
        assert what in str(e.value) and "Unicode" in str(e.value), (args, str(e.value))


# The real server.


async def assert_nothing_recorded(server: Server) -> None:
    status, body, _ = await server.rest({"action": "list"})
    assert (status, body) == (200, {"args": {"jobs": {}}})
    assert not server.dispatcher.jobs
    status, body, _ = await server.rest({"action": "read_logs"}, path="/rpc/logs")
    assert status == 200 and body["args"]["dispatcher"] == {}, body


@ensure
async def test_lone_surrogate_over_rest_answers_400_and_records_nothing(server: Server) -> None:
    status, body, _ = await server.rest(raw=raw({"action": "run", "p1": "echo " + LONE}))
    assert status == 400, body
    assert "p1" in body["args"]["detail"], body
    await assert_nothing_recorded(server)
    # The server is as good as new: a valid job runs and is listed, killed and stopped.
    await server.run({"jobs": [{"id": "after", "commands": "sleep 30"}]})
    status, body, _ = await server.rest({"action": "kill", "job_id": "after"})
    assert status == 200 and body["args"]["killed"]["jobs"] == ["after"], body


@ensure
async def test_lone_surrogates_over_websocket_answer_400_with_the_request_id(server: Server) -> None:
    client = await server.ws()
    requests = [
        ("dispatcher", {"action": "run", "p1": "echo " + LONE}, "p1"),
        ("dispatcher", {"action": "run", "x" + LONE: "true"}, "key"),
        ("dispatcher", {"action": "run", "jobs": [{"id": "j", "commands": "true", "cwd": "/" + LONE}]}, "cwd"),
        ("dispatcher", {"action": "run", "jobs": [{"id": "j", "commands": "true", "env": {"E": LONE}}]}, "env.E"),
        ("dispatcher", {"action": "run", "jobs": [{"id": "j", "commands": "true", "queue": LONE}]}, "queue"),
        ("dispatcher", {"action": "kill", "job_id": LONE}, "job_id"),
        ("logs", {"action": "job", "job_id": LONE}, "job_id"),
        ("auth", {"username": LONE, "password": "x"}, "username"),
        ("auth", {"username": "admin", "password": LONE}, "password"),
        ("auth_token", {"token": LONE}, "token"),
        ("subscribe", [LONE], "args"),
    ]
    for n, (name, args, field) in enumerate(requests):
        namespace = "events" if name == "subscribe" else "rpc"
        reply = await call_raw(client, f"r{n}", raw({"namespace": namespace, "name": name, "id": f"r{n}",
                                                     "args": args}))
        assert reply["name"] == "error" and reply["args"]["code"] == 400, (name, args, reply)
        assert field in reply["args"]["detail"], (field, reply)
    # A lone surrogate in the id itself: the id cannot be echoed.
    client.send_raw(raw({"namespace": "rpc", "name": "identify", "id": "a" + LONE, "args": {}}))
    reply = await client.next_unmatched()
    assert reply["id"] == "" and reply["args"]["code"] == 400 and "id" in reply["args"]["detail"], reply
    # Still logged in, still usable; nothing was recorded.
    listed = await client.call("dispatcher", {"action": "list"})
    assert listed["args"] == {"jobs": {}}, listed
    await assert_nothing_recorded(server)


@ensure
async def test_surrogate_pairs_are_text_and_run(server: Server) -> None:
    [job_id] = await server.run({"p\U0001f600": "echo \U0001f600"})
    record = await server.wait_finished(job_id)
    assert record["process_details"]["echo \U0001f600"] == "\U0001f600\n", record


# A job that fails to start, for any reason, finishes cleanly.


@ensure
async def test_a_job_whose_start_fails_unexpectedly_finishes_cleanly(server: Server, monkeypatch) -> None:
    from sysadm_dispatch.process import procs

    real = procs.ProcessTracker.spawn

    def broken(self: Any, tree: Any, protocol: Any, executable: str, args: Any, *rest: Any) -> Any:
        if args[1:] == ["boom"]:
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "a stand-in for any unforeseen failure")
        return real(self, tree, protocol, executable, args, *rest)

    monkeypatch.setattr(procs.ProcessTracker, "spawn", broken)
    client = await server.ws()
    await client.call("subscribe", ["dispatcher"], namespace="events")
    await server.run({"broken": ["echo boom", "echo never"]})
    record = await server.wait_finished("broken")
    details = record["process_details"]
    assert record["state"] == "finished" and record["success"] == "false", record
    assert details["return_codes/echo boom"] == "127", details
    assert "cannot run command" in details["echo boom"], details
    assert "echo never" not in details, details
    assert "broken" not in server.dispatcher.jobs
    states = []
    while "finished" not in states:
        event = await client.next_event()
        if event["args"]["process_id"] == "broken":
            states.append(event["args"]["state"])
    assert states[-1] == "finished", states
    status, body, _ = await server.rest({"action": "job", "job_id": "broken"}, path="/rpc/logs")
    assert status == 200 and body["args"]["process_details"]["return_codes/echo boom"] == "127", body
    # Other jobs run on, and the server stops (the fixture stops it).
    [ok] = await server.run({"ok": "echo fine"})
    assert (await server.wait_finished(ok))["success"] == "true"


@ensure
async def test_a_job_whose_runner_cannot_be_made_finishes_cleanly(server: Server, monkeypatch) -> None:
    from sysadm_dispatch.process import runner

    real = runner.JobRunner.start

    def broken(self: Any) -> Any:
        if self.job.id == "broken":
            raise RuntimeError("a stand-in for any unforeseen failure")
        return real(self)

    monkeypatch.setattr(runner.JobRunner, "start", broken)
    await server.run({"broken": "echo boom"})
    record = await server.wait_finished("broken")
    assert record["state"] == "finished" and record["success"] == "false", record
    await poll(lambda: "broken" not in server.dispatcher.jobs)
    status, body, _ = await server.rest({"action": "list"})
    assert body["args"]["jobs"] == {}, body
    [ok] = await server.run({"ok": "echo fine"})
    assert (await server.wait_finished(ok))["success"] == "true"
