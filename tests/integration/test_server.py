"""
The real layer: a server built by makeService on 127.0.0.1:0, real
processes, real REST (treq) and WebSocket (autobahn) clients.
"""

from __future__ import annotations

import base64
import os

import pytest_twisted
from conftest import Server, pid_alive, poll

ensure = pytest_twisted.ensureDeferred


# The seed's request and response shapes.


@ensure
async def test_seed_list_shape_over_websocket(server: Server) -> None:
    await server.run({"jobs": [
        {"id": "sysadm_pkg_install-{9c079421-ace9-4b6e-8870-d023b48f4c49}", "commands": ["sleep 30"],
         "queue": "pkg_queue"},
    ]})
    client = await server.ws()
    reply = await client.call("dispatcher", {"action": "list"}, id="fooid")
    assert reply["namespace"] == "rpc"
    assert reply["name"] == "response"
    assert reply["id"] == "fooid"
    job = reply["args"]["jobs"]["pkg_queue"]["sysadm_pkg_install-{9c079421-ace9-4b6e-8870-d023b48f4c49}"]
    assert job["commands"] == ["sleep 30"]
    assert job["queue_position"] == "0"
    assert job["state"] == "running"


@ensure
async def test_seed_kill_shape_over_rest(server: Server) -> None:
    job_id = "sysadm_pkg_install-{9c079421-ace9-4b6e-8870-d023b48f4c49}"
    await server.run({"jobs": [{"id": job_id, "commands": "sleep 30", "queue": "pkg_queue"}]})
    status, body, response = await server.rest({"action": "kill", "job_id": job_id})
    assert status == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert body["args"]["killed"]["jobs"] == [job_id]
    status, body, _ = await server.rest({"action": "list"})
    assert body == {"args": {"jobs": {}}}


@ensure
async def test_list_over_rest_accepts_whole_envelope(server: Server) -> None:
    status, body, _ = await server.rest({"namespace": "rpc", "name": "dispatcher", "id": "x",
                                         "args": {"action": "list"}})
    assert status == 200
    assert body == {"args": {"jobs": {}}}


# Running.


@ensure
async def test_run_compatible_form_over_websocket(server: Server) -> None:
    client = await server.ws()
    reply = await client.call("subscribe", ["dispatcher"], namespace="events")
    assert reply["args"] == {"subscribe": "dispatcher"}
    reply = await client.call("dispatcher", {"action": "run", "procID1": "echo sample1",
                                             "procID2": ["echo chainCmd1", "echo chainCmd2"]})
    assert reply["args"] == {"started": ["procID1", "procID2"]}
    finished = {}
    while len(finished) < 2:
        event = await client.next_event()
        if event["args"]["state"] == "finished":
            finished[event["args"]["process_id"]] = event["args"]
    assert finished["procID1"]["process_details"]["echo sample1"] == "sample1\n"
    assert finished["procID1"]["queue"] == "no_queue"
    details = finished["procID2"]["process_details"]
    assert details["cmd_list"] == ["echo chainCmd1", "echo chainCmd2"]
    assert details["return_codes/echo chainCmd2"] == "0"


@ensure
async def test_run_chain_output_and_return_codes(server: Server) -> None:
    [job_id] = await server.run({"jobs": [{"id": "chain", "commands": ["echo chainCmd1", "echo chainCmd2"]}]})
    record = await server.wait_finished(job_id)
    details = record["process_details"]
    assert record["state"] == "finished"
    assert record["success"] == "true"
    assert details["cmd_list"] == ["echo chainCmd1", "echo chainCmd2"]
    assert details["echo chainCmd1"] == "chainCmd1\n"
    assert details["return_codes/echo chainCmd1"] == "0"
    assert details["echo chainCmd2"] == "chainCmd2\n"
    assert details["return_codes/echo chainCmd2"] == "0"
    assert "time_started" in details and "time_finished" in details


@ensure
async def test_chain_stops_at_first_failure(server: Server, tmp_path) -> None:
    marker = tmp_path / "ran"
    await server.run({"jobs": [{"id": "c", "commands": ["true", "sh -c 'echo oops >&2; exit 3'", f"touch {marker}"]}]})
    record = await server.wait_finished("c")
    details = record["process_details"]
    assert record["success"] == "false"
    assert details["return_codes/true"] == "0"
    assert details["return_codes/sh -c 'echo oops >&2; exit 3'"] == "3"
    assert details["sh -c 'echo oops >&2; exit 3'"] == "oops\n"
    assert f"return_codes/touch {marker}" not in details
    assert not marker.exists()


@ensure
async def test_commands_are_not_given_to_a_shell(server: Server, tmp_path) -> None:
    target = tmp_path / "x"
    await server.run({"jobs": [{"id": "s", "commands": [f"echo hi > {target} && echo $HOME | cat"]}]})
    record = await server.wait_finished("s")
    assert record["process_details"][f"echo hi > {target} && echo $HOME | cat"] == f"hi > {target} && echo $HOME | cat\n"
    assert not target.exists()


@ensure
async def test_stdout_and_stderr_merged_and_stdin_is_devnull(server: Server) -> None:
    command = "sh -c 'echo one; echo two >&2; cat; echo three'"
    await server.run({"jobs": [{"id": "m", "commands": command}]})
    record = await server.wait_finished("m")
    assert record["process_details"][command] == "one\ntwo\nthree\n"


@ensure
async def test_fast_chains_keep_every_command_output(server: Server) -> None:
    # Quick commands can exit before their spawn call returns: their output
    # must still be read, for every command of every chain.
    ids = await server.run({f"fast{i}": ["echo a", "echo b", "echo c"] for i in range(40)})
    for job_id in ids:
        details = (await server.wait_finished(job_id))["process_details"]
        assert (details["echo a"], details["echo b"], details["echo c"]) == ("a\n", "b\n", "c\n"), details


@ensure
async def test_missing_program_fails_with_127_and_reason(server: Server) -> None:
    await server.run({"jobs": [{"id": "missing", "commands": ["no-such-program-xyz arg", "echo never"]}]})
    record = await server.wait_finished("missing")
    details = record["process_details"]
    assert details["return_codes/no-such-program-xyz arg"] == "127"
    assert "no-such-program-xyz" in details["no-such-program-xyz arg"]
    assert "not found" in details["no-such-program-xyz arg"]
    assert "return_codes/echo never" not in details
    status, _, _ = await server.rest({"action": "list"})
    assert status == 200


@ensure
async def test_cwd_env_and_generated_id(server: Server, tmp_path) -> None:
    started = await server.run({"jobs": [{"commands": ["pwd", "sh -c 'echo $GREETING'"], "queue": "pkg_queue",
                                          "cwd": str(tmp_path), "env": {"GREETING": "hello"}}]})
    [job_id] = started
    assert job_id.startswith("pkg_queue-{") and job_id.endswith("}")
    record = await server.wait_finished(job_id)
    details = record["process_details"]
    assert details["pwd"] == f"{tmp_path}\n"
    assert details["sh -c 'echo $GREETING'"] == "hello\n"


@ensure
async def test_log_is_capped(make_server) -> None:
    server = await make_server("--log-cap-bytes", "1000")
    command = "sh -c 'head -c 100000 /dev/zero | tr \"\\\\0\" x'"
    await server.run({"jobs": [{"id": "big", "commands": command}]})
    record = await server.wait_finished("big")
    text = record["process_details"][command]
    assert text.startswith("x" * 500) and text.endswith("x" * 500)
    assert "99000 bytes of output dropped" in text
    assert len(text) < 1200


# Queues.


@ensure
async def test_serial_queue_order_and_positions(server: Server, tmp_path) -> None:
    order = tmp_path / "order"
    jobs = [{"id": f"q{i}", "commands": [f"sh -c 'echo q{i} >> {order}'"], "queue": "pkg_queue"} for i in range(4)]
    jobs[0]["commands"] = ["sleep 30"]
    await server.run({"jobs": jobs})
    status, body, _ = await server.rest({"action": "list"})
    listed = body["args"]["jobs"]["pkg_queue"]
    assert [(k, v["state"], v["queue_position"]) for k, v in listed.items()] == [
        ("q0", "running", "0"), ("q1", "pending", "1"), ("q2", "pending", "2"), ("q3", "pending", "3"),
    ]
    # Killing a pending job renumbers the rest.
    await server.rest({"action": "kill", "job_id": "q2"})
    _, body, _ = await server.rest({"action": "list"})
    listed = body["args"]["jobs"]["pkg_queue"]
    assert [(k, v["queue_position"]) for k, v in listed.items()] == [("q0", "0"), ("q1", "1"), ("q3", "2")]
    # Killing the running one starts the next, in order.
    waits = [server.wait_finished("q1"), server.wait_finished("q3")]
    await server.rest({"action": "kill", "job_id": "q0"})
    for w in waits:
        await w
    assert order.read_text() == "q1\nq3\n"


@ensure
async def test_no_queue_runs_everything_at_once(server: Server) -> None:
    await server.run({f"n{i}": "sleep 30" for i in range(5)})
    _, body, _ = await server.rest({"action": "list"})
    listed = body["args"]["jobs"]["no_queue"]
    assert {v["state"] for v in listed.values()} == {"running"}
    assert all("queue_position" not in v for v in listed.values())
    _, body, _ = await server.rest({"action": "kill", "job_id": [f"n{i}" for i in range(5)]})
    assert sorted(body["args"]["killed"]["jobs"]) == [f"n{i}" for i in range(5)]


@ensure
async def test_custom_queue_limit(make_server) -> None:
    server = await make_server("--queue", "two_queue:2")
    await server.run({"jobs": [{"id": f"t{i}", "commands": "sleep 30", "queue": "two_queue"} for i in range(3)]})
    _, body, _ = await server.rest({"action": "list"})
    states = {k: (v["state"], v["queue_position"]) for k, v in body["args"]["jobs"]["two_queue"].items()}
    assert states == {"t0": ("running", "0"), "t1": ("running", "0"), "t2": ("pending", "1")}


# Validation.


@ensure
async def test_run_validation_is_atomic(server: Server) -> None:
    status, body, _ = await server.rest({"action": "run", "jobs": [
        {"id": "good", "commands": "sleep 30"},
        {"id": "bad", "commands": [1, 2]},
    ]})
    assert status == 400
    assert body["args"]["code"] == 400
    assert body["args"]["message"] == "Bad Request"
    assert "'bad'" in body["args"]["detail"]
    _, body, _ = await server.rest({"action": "list"})
    assert body["args"]["jobs"] == {}


@ensure
async def test_run_rejections_name_the_problem(server: Server, tmp_path) -> None:
    cases = [
        ({"a": "echo 'unclosed"}, "'a'"),
        ({"jobs": [{"id": "q", "commands": "true", "queue": "nope_queue"}]}, "nope_queue"),
        ({"jobs": [{"id": "d", "commands": "true"}, {"id": "d", "commands": "true"}]}, "twice"),
        ({"jobs": [{"id": "e", "commands": []}]}, "empty"),
        ({"jobs": [{"id": "c", "commands": "true", "cwd": str(tmp_path / "missing")}]}, "cwd"),
        ({"jobs": [{"id": "v", "commands": "true", "env": {"A": 1}}]}, "env"),
        ({"jobs": [{"id": "t", "commands": "true", "timeout": "soon"}]}, "timeout"),
        ({}, "no jobs"),
    ]
    for args, needle in cases:
        status, body, _ = await server.rest({"action": "run", **args})
        assert status == 400, (args, body)
        assert needle in body["args"]["detail"], (args, body)
    assert server.dispatcher.jobs == {}


@ensure
async def test_duplicate_active_id_refused(server: Server) -> None:
    await server.run({"dup": "sleep 30"})
    status, body, _ = await server.rest({"action": "run", "dup": "echo again", "other": "echo x"})
    assert status == 400
    assert "'dup'" in body["args"]["detail"] and "already running" in body["args"]["detail"]
    assert "other" not in server.dispatcher.jobs
    # Once finished, the id may be used again.
    await server.rest({"action": "kill", "job_id": "dup"})
    assert await server.run({"dup": "true"}) == ["dup"]


# Killing.


@ensure
async def test_killed_pending_job_never_runs(server: Server, tmp_path) -> None:
    marker = tmp_path / "ran"
    await server.run({"jobs": [
        {"id": "blocker", "commands": "sleep 30", "queue": "pkg_queue"},
        {"id": "victim", "commands": f"touch {marker}", "queue": "pkg_queue"},
        {"id": "after", "commands": "true", "queue": "pkg_queue"},
    ]})
    victim = server.wait_finished("victim")
    after = server.wait_finished("after")
    _, body, _ = await server.rest({"action": "kill", "job_id": "victim"})
    assert body["args"]["killed"]["jobs"] == ["victim"]
    record = await victim
    assert record["killed"] is True and record["process_details"]["state"] == "finished"
    await server.rest({"action": "kill", "job_id": "blocker"})
    await after
    assert not marker.exists()


@ensure
async def test_kill_reaches_grandchild(server: Server, tmp_path) -> None:
    pidfile = tmp_path / "pids"
    # sh starts a background grandchild and waits; both print their pid.
    command = f"sh -c 'sleep 300 & echo $! > {pidfile}; wait'"
    await server.run({"jobs": [{"id": "tree", "commands": command}]})
    await poll(lambda: pidfile.exists() and pidfile.read_text().strip())
    grandchild = int(pidfile.read_text())
    assert pid_alive(grandchild)
    _, body, _ = await server.rest({"action": "kill", "job_id": "tree"})
    assert body["args"]["killed"]["jobs"] == ["tree"]
    # The reply comes once the job is over, its processes gone.
    assert not pid_alive(grandchild)
    assert "tree" not in server.dispatcher.jobs


@ensure
async def test_term_ignoring_job_is_killed_after_grace(server: Server, tmp_path) -> None:
    ready = tmp_path / "ready"
    command = f"sh -c 'trap \"\" TERM; touch {ready}; while true; do sleep 0.05; done'"
    await server.run({"jobs": [{"id": "stubborn", "commands": command}]})
    await poll(ready.exists)
    finished = server.wait_finished("stubborn")
    before = server.dispatcher.reactor.seconds()
    _, body, _ = await server.rest({"action": "kill", "job_id": "stubborn"})
    elapsed = server.dispatcher.reactor.seconds() - before
    record = await finished
    assert body["args"]["killed"]["jobs"] == ["stubborn"]
    assert record["killed"] is True
    assert record["signal"] == "SIGKILL"
    assert elapsed >= 1.0  # the grace (1 s in tests) was given before SIGKILL


@ensure
async def test_kill_unknown_and_finished_ids_reported_not_found(server: Server) -> None:
    await server.run({"done": "true"})
    await poll(lambda: "done" not in server.dispatcher.jobs)
    _, body, _ = await server.rest({"action": "kill", "job_id": ["done", "never-was"]})
    assert body["args"]["killed"] == {"jobs": [], "not_found": ["done", "never-was"]}


@ensure
async def test_kill_job_id_must_be_string_or_list(server: Server) -> None:
    for bad in (None, 5, [], [1], {"a": 1}):
        args = {"action": "kill"} if bad is None else {"action": "kill", "job_id": bad}
        status, body, _ = await server.rest(args)
        assert status == 400 and "job_id" in body["args"]["detail"], bad


# One dispatcher behind both transports.


@ensure
async def test_job_started_over_rest_is_listed_and_killed_over_websocket(server: Server) -> None:
    await server.run({"jobs": [{"id": "cross", "commands": "sleep 30", "queue": "iocage_queue"}]})
    client = await server.ws()
    reply = await client.call("dispatcher", {"action": "list"})
    assert reply["args"]["jobs"]["iocage_queue"]["cross"]["state"] == "running"
    reply = await client.call("dispatcher", {"action": "kill", "job_id": "cross"})
    assert reply["args"]["killed"]["jobs"] == ["cross"]
    _, body, _ = await server.rest({"action": "list"})
    assert body["args"]["jobs"] == {}


@ensure
async def test_job_started_over_websocket_is_killed_over_rest(server: Server) -> None:
    client = await server.ws()
    reply = await client.call("dispatcher", {"action": "run", "wsjob": "sleep 30"})
    assert reply["args"]["started"] == ["wsjob"]
    _, body, _ = await server.rest({"action": "kill", "job_id": "wsjob"})
    assert body["args"]["killed"]["jobs"] == ["wsjob"]


# Errors, from real requests.


@ensure
async def test_websocket_error_codes(server: Server) -> None:
    client = await server.ws(login=None)
    # 401 before auth, for anything but auth and identify.
    reply = await client.call("dispatcher", {"action": "list"}, id="early")
    assert reply["name"] == "error" and reply["id"] == "early" and reply["args"]["code"] == 401
    reply = await client.call("identify")
    assert reply["args"]["type"] == "server" and reply["args"]["hostname"]
    reply = await client.login("admin", "wrong")
    assert reply["args"]["code"] == 401 and reply["args"]["message"] == "Unauthorized"
    reply = await client.login("admin", server.admin_password)
    token, ttl = reply["args"]
    assert isinstance(token, str) and len(token) >= 22 and ttl == 900
    # 400: malformed JSON, not an object, missing name, bad args, unknown action.
    client.send_raw(b"{not json")
    reply = await client.next_unmatched()
    assert reply["args"]["code"] == 400 and reply["id"] == ""
    client.send_raw(b"[1, 2]")
    assert (await client.next_unmatched())["args"]["code"] == 400
    client.send({"namespace": "rpc", "id": "noname", "args": {}})
    reply = await client.next_unmatched()
    assert reply["args"]["code"] == 400 and reply["id"] == "noname" and "name" in reply["args"]["detail"]
    reply = await client.call("dispatcher", ["list"])
    assert reply["args"]["code"] == 400
    reply = await client.call("dispatcher", {"action": "explode"})
    assert reply["args"]["code"] == 400 and "explode" in reply["args"]["detail"]
    # 404: unknown namespace/name.
    reply = await client.call("nothing", {}, namespace="rpc")
    assert reply["args"]["code"] == 404 and reply["args"]["message"] == "Not Found"
    # Binary frames holding JSON are accepted.
    client.send_raw(b'{"namespace":"rpc","name":"dispatcher","id":"bin","args":{"action":"list"}}', binary=True)
    reply = await client.next_unmatched()
    assert reply["id"] == "bin" and reply["name"] == "response"
    # Invalid UTF-8 in a binary frame: 400, and the connection stays usable.
    client.send_raw(b'{"namespace":"rpc","name":"\xff"}', binary=True)
    reply = await client.next_unmatched()
    assert reply["args"]["code"] == 400 and "UTF-8" in reply["args"]["detail"]
    reply = await client.call("dispatcher", {"action": "list"})
    assert reply["name"] == "response"


@ensure
async def test_requests_sent_right_after_auth_run_as_the_logged_in_user(server: Server) -> None:
    # A client may send its login and its first requests without waiting
    # for the login's reply: they must wait for it, not answer 401.
    client = await server.ws(login=None)
    client.send({"namespace": "rpc", "name": "auth", "id": "1",
                 "args": {"username": "admin", "password": server.admin_password}})
    client.send({"namespace": "events", "name": "subscribe", "id": "2", "args": ["dispatcher"]})
    client.send({"namespace": "rpc", "name": "dispatcher", "id": "3", "args": {"action": "run", "piped": "true"}})
    client.send({"namespace": "rpc", "name": "dispatcher", "id": "4", "args": {"action": "list"}})
    replies = [await client.next_unmatched() for _ in range(4)]
    assert [r["id"] for r in replies] == ["1", "2", "3", "4"]
    assert [r["name"] for r in replies] == ["response"] * 4, replies
    assert replies[2]["args"] == {"started": ["piped"]}
    # A failed login does not let what follows it through.
    other = await server.ws(login=None)
    other.send({"namespace": "rpc", "name": "auth", "id": "a", "args": {"username": "admin", "password": "wrong"}})
    other.send({"namespace": "rpc", "name": "dispatcher", "id": "b", "args": {"action": "list"}})
    first, second = await other.next_unmatched(), await other.next_unmatched()
    assert (first["id"], first["args"]["code"]) == ("a", 401)
    assert (second["id"], second["args"]["code"]) == ("b", 401)


@ensure
async def test_websocket_413_keeps_connection_usable(make_server) -> None:
    server = await make_server("--max-message-bytes", "4096")
    client = await server.ws()
    client.send({"namespace": "rpc", "name": "dispatcher", "id": "big", "args": {"action": "list", "pad": "x" * 10000}})
    reply = await client.next_unmatched()
    assert reply["args"]["code"] == 413 and reply["args"]["message"] == "Request Entity Too Large"
    reply = await client.call("dispatcher", {"action": "list"})
    assert reply["name"] == "response"


@ensure
async def test_websocket_replies_keep_request_order(server: Server) -> None:
    client = await server.ws()
    await server.run({"slow": "sleep 30"})
    # A kill (slow to answer: waits for the job to die) then a list (fast).
    client.send({"namespace": "rpc", "name": "dispatcher", "id": "1", "args": {"action": "kill", "job_id": "slow"}})
    client.send({"namespace": "rpc", "name": "dispatcher", "id": "2", "args": {"action": "list"}})
    first = await client.next_unmatched()
    second = await client.next_unmatched()
    assert (first["id"], second["id"]) == ("1", "2")


@ensure
async def test_rest_error_codes(make_server) -> None:
    server = await make_server("--max-message-bytes", "8192")
    status, body, response = await server.rest({"action": "list"}, auth=None)
    assert status == 401 and body["args"]["code"] == 401 and body["args"]["detail"]
    assert response.headers.getRawHeaders(b"www-authenticate")
    status, body, _ = await server.rest({"action": "list"}, auth=("admin", "wrong"))
    assert status == 401
    status, body, _ = await server.rest(raw=b"{nope")
    assert status == 400 and "JSON" in body["args"]["detail"]
    status, body, _ = await server.rest(raw=b'{"action": "list", "x": "\xff"}')
    assert status == 400 and "UTF-8" in body["args"]["detail"]
    status, body, _ = await server.rest(raw=b"[" * 100 + b"]" * 100)
    assert status == 400 and "nests" in body["args"]["detail"]
    status, body, _ = await server.rest(raw=b'{"action": "list", "n": ' + b"9" * 5000 + b"}")
    assert status == 400
    status, body, _ = await server.rest({"action": "list", "pad": "x" * 10000})
    assert status == 413
    status, body, _ = await server.rest({}, path="/rpc/nothing")
    assert status == 404
    status, body, _ = await server.rest({}, path="/")
    assert status == 404 and body["args"]["code"] == 404
    status, body, response = await server.rest(None, method="GET")
    assert status == 405 and response.headers.getRawHeaders(b"allow") == [b"PUT, POST"]
    status, body, _ = await server.rest({"action": "list"}, method="POST")
    assert status == 200
    status, body, _ = await server.rest(["dispatcher"], path="/events/subscribe")
    assert status == 400 and "WebSocket" in body["args"]["detail"]
    status, body, _ = await server.rest({}, path="/rpc/identify", auth=None)
    assert status == 200 and body["args"]["type"] == "server"


@ensure
async def test_rest_503_when_pending_limit_reached(server: Server) -> None:
    server.dispatcher.max_pending = 2
    for i in range(3):
        await server.run({"jobs": [{"id": f"p{i}", "commands": "sleep 30", "queue": "pkg_queue"}]})
    status, body, _ = await server.rest({"action": "run", "jobs": [{"id": "more", "commands": "true",
                                                                     "queue": "pkg_queue"}]})
    assert status == 503 and "pending" in body["args"]["detail"]
    assert "more" not in server.dispatcher.jobs


# Authentication and roles.


@ensure
async def test_rest_basic_and_bearer(server: Server) -> None:
    credentials = base64.b64encode(f"admin:{server.admin_password}".encode()).decode()
    status, _, _ = await server.rest({"action": "list"}, auth=None, headers={"Authorization": f"Basic {credentials}"})
    assert status == 200
    status, body, _ = await server.rest({"username": "admin", "password": server.admin_password}, path="/rpc/auth",
                                        auth=None)
    assert status == 200
    token, ttl = body["args"]
    status, _, _ = await server.rest({"action": "list"}, auth=None, headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    # The token works over WebSocket too: one token store for both transports.
    client = await server.ws(login=None)
    reply = await client.call("auth_token", {"token": token})
    assert reply["args"] == [token, 900]
    reply = await client.call("dispatcher", {"action": "list"})
    assert reply["name"] == "response"
    # auth_clear revokes it everywhere, and has no reply.
    client.send({"namespace": "rpc", "name": "auth_clear", "id": "clear", "args": {}})
    reply = await client.call("dispatcher", {"action": "list"})
    assert reply["args"]["code"] == 401
    status, _, _ = await server.rest({"action": "list"}, auth=None, headers={"Authorization": f"Bearer {token}"})
    assert status == 401
    status, _, _ = await server.rest({"action": "list"}, auth=None, headers={"Authorization": "Bearer nonsense"})
    assert status == 401


@ensure
async def test_read_user_may_look_but_not_run_or_kill(server: Server) -> None:
    server.add_user("viewer", "read", "viewpw")
    await server.run({"running": "sleep 30"})
    client = await server.ws(login=("viewer", "viewpw"))
    reply = await client.call("dispatcher", {"action": "list"})
    assert "running" in reply["args"]["jobs"]["no_queue"]
    reply = await client.call("dispatcher", {"action": "run", "x": "true"})
    assert reply["args"]["code"] == 403 and reply["args"]["message"] == "Forbidden"
    reply = await client.call("dispatcher", {"action": "kill", "job_id": "running"})
    assert reply["args"]["code"] == 403
    assert "running" in server.dispatcher.jobs and "x" not in server.dispatcher.jobs
    reply = await client.call("query")
    assert reply["args"] == {"rpc/dispatcher": "read", "rpc/logs": "read"}
    status, body, _ = await server.rest({"action": "run", "y": "true"}, auth=("viewer", "viewpw"))
    assert status == 403
    admin = await server.ws()
    reply = await admin.call("query")
    assert reply["args"] == {"rpc/dispatcher": "read/write", "rpc/logs": "read"}


@ensure
async def test_token_expires_without_use(make_server) -> None:
    server = await make_server("--token-ttl", "1")
    client = await server.ws()
    reply = await client.call("dispatcher", {"action": "list"})
    assert reply["name"] == "response"
    # Expiry is driven by the reactor's clock; here the real one: wait it out.
    tokens = server.router.auth.tokens
    await poll(lambda: all(t.expires <= server.dispatcher.reactor.seconds() for t in tokens._tokens.values()), 5)
    reply = await client.call("dispatcher", {"action": "list"})
    assert reply["args"]["code"] == 401


@ensure
async def test_stop_kills_running_jobs(make_server, tmp_path) -> None:
    server = await make_server()
    pidfile = tmp_path / "pid"
    await server.run({"jobs": [{"id": "long", "commands": f"sh -c 'echo $$ > {pidfile}; exec sleep 300'"}]})
    await poll(lambda: pidfile.exists() and pidfile.read_text().strip())
    pid = int(pidfile.read_text())
    assert pid_alive(pid)
    await server.stop()
    assert not pid_alive(pid)
    assert os.path.exists(server.options["users"])


@ensure
async def test_the_log_names_who_ran_what_and_only_the_jobs_that_failed(server: Server) -> None:
    from security_helpers import captured_log
    from twisted.logger import formatEvent

    with captured_log() as events:
        await server.run({"jobs": [{"id": "fine", "commands": "true"}, {"id": "broken", "commands": "false"}]})
        await server.wait_finished("fine")
        await server.wait_finished("broken")
    lines = [formatEvent(event) for event in events]
    queued = [line for line in lines if "queued" in line]
    assert len(queued) == 1 and "fine" in queued[0] and "broken" in queued[0], lines
    ended = [line for line in lines if "did not succeed" in line]
    assert len(ended) == 1 and "broken" in ended[0] and "return_codes=[1]" in ended[0], lines
    assert not any("fine" in line for line in lines if line not in queued), lines
