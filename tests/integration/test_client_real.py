"""
The command-line client for real: the installed console script, run as a
process, against a server on 127.0.0.1:0 started by the test.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import pytest_twisted
from client_helpers import client, client_env, start_client
from conftest import Server, deferLater, poll, python_env, start_server
from twistd_helpers import ensure_stopped, free_port, spawn_twistd, wait_port
from twisted.internet import reactor

from sysadm_dispatch.auth.users import READ

ensure = pytest_twisted.ensureDeferred


@pytest.fixture
def home(tmp_path: Any) -> str:
    path = tmp_path / "home"
    path.mkdir()
    return str(path)


def env_for(server: Server, home: str, **extra: str) -> dict[str, str]:
    return client_env(home, server.ws_port, server.admin_password, **extra)


async def running(server: Server, job_id: str) -> bool:
    _, body, _ = await server.rest({"action": "list"})
    return any(job_id in queue and queue[job_id]["state"] == "running" for queue in body["args"]["jobs"].values())


async def wait_running(server: Server, job_id: str, seconds: float = 20) -> None:
    deadline = reactor.seconds() + seconds
    while not await running(server, job_id):
        if reactor.seconds() > deadline:
            raise AssertionError(f"{job_id} never ran")
        await deferLater(0.02)


# Following a job: output live, exit codes.


@ensure
async def test_output_arrives_while_the_job_still_runs(server: Server, home: str) -> None:
    run = start_client(["run", "--id", "live", "sh -c 'echo first line; exec sleep 60'"], env_for(server, home))
    try:
        await run.wait_for("first line\n")
        assert not run.ended.called
        assert await running(server, "live")
        killer = await client(["kill", "live"], env_for(server, home))
        assert killer.exit_code == 0, killer.err
        assert killer.out == "killed live\n"
        # Killed from another client while following: 128 + SIGTERM.
        assert await run.finish() == 143, run.err
    finally:
        run.kill_if_running()


@ensure
async def test_killed_with_sigkill_exits_137(server: Server, home: str) -> None:
    # The job ignores SIGTERM; after the grace (1 s in tests) it gets SIGKILL.
    command = "sh -c 'trap \"\" TERM; echo ready; exec sleep 60'"
    run = start_client(["run", "--id", "stubborn", command], env_for(server, home))
    try:
        await run.wait_for("ready\n")
        killer = await client(["kill", "stubborn"], env_for(server, home))
        assert killer.exit_code == 0
        assert await run.finish() == 137, run.err
    finally:
        run.kill_if_running()


@ensure
async def test_chain_output_in_order_and_exit_code_of_the_last(server: Server, home: str) -> None:
    run = await client(["run", "echo one", "echo two"], env_for(server, home))
    assert run.exit_code == 0, run.err
    assert run.out == "one\ntwo\n"
    assert "==> [1/2] echo one" in run.err and "==> [2/2] echo two" in run.err
    assert run.err.index("[1/2]") < run.err.index("[2/2]")


@ensure
async def test_exit_code_is_the_failing_commands(server: Server, home: str) -> None:
    run = await client(["run", "true", "sh -c 'echo failing; exit 3'", "echo never"], env_for(server, home))
    assert run.exit_code == 3, run.err
    assert run.out == "failing\n"


@ensure
async def test_single_command_has_no_header(server: Server, home: str) -> None:
    run = await client(["run", "sh -c 'exit 7'"], env_for(server, home))
    assert run.exit_code == 7
    assert "==>" not in run.err


@ensure
async def test_timeout_exits_124(server: Server, home: str) -> None:
    run = await client(["run", "--timeout", "0.5", "sleep 60"], env_for(server, home))
    assert run.exit_code == 124, run.err


@ensure
async def test_env_cwd_queue_reach_the_job(server: Server, home: str, tmp_path: Any) -> None:
    run = await client(["run", "--env", "GREETING=hi there", "--cwd", str(tmp_path), "--queue", "pkg_queue",
                        "--id", "opts", "sh -c 'echo $GREETING; pwd'"], env_for(server, home))
    assert run.exit_code == 0, run.err
    assert run.out == f"hi there\n{tmp_path}\n"
    record = await server.wait_finished("opts")
    assert record["queue"] == "pkg_queue"


@ensure
async def test_run_json_prints_events_as_lines(server: Server, home: str) -> None:
    run = await client(["run", "--json", "--id", "js", "echo x"], env_for(server, home))
    assert run.exit_code == 0
    events = [json.loads(line) for line in run.out.splitlines()]
    assert all(e["process_id"] == "js" for e in events)
    assert events[-1]["state"] == "finished"
    assert events[-1]["process_details"]["echo x"] == "x\n"


@ensure
async def test_bad_run_request_is_a_usage_error(server: Server, home: str) -> None:
    run = await client(["run", "--queue", "no_such_queue", "true"], env_for(server, home))
    assert run.exit_code == 2
    assert "no_such_queue" in run.err
    assert "Traceback" not in run.err


# --detach, follow.


@ensure
async def test_detach_then_follow(server: Server, home: str) -> None:
    env = env_for(server, home)
    detached = await client(["run", "--detach", "--id", "bg", "sh -c 'sleep 0.5; echo done; exit 5'"], env)
    assert detached.exit_code == 0
    assert detached.out == "bg\n"
    following = await client(["follow", "bg"], env)
    assert following.exit_code == 5, following.err
    assert following.out == "done\n"
    # Finished: its stored log.
    again = await client(["follow", "bg"], env)
    assert again.exit_code == 5
    assert again.out == "done\n"
    assert "has finished" in again.err


@ensure
async def test_detach_prints_a_generated_readable_id(server: Server, home: str) -> None:
    detached = await client(["run", "--detach", "true"], env_for(server, home))
    job_id = detached.out.strip()
    assert job_id.startswith("cli-")
    record = await server.wait_finished(job_id)
    assert record["success"] == "true"


@ensure
async def test_follow_a_running_job_says_from_now_on(server: Server, home: str, tmp_path: Any) -> None:
    go = tmp_path / "go"
    await server.run({"tail": f"sh -c 'echo early; while [ ! -e {go} ]; do sleep 0.02; done; echo late'"})
    await wait_running(server, "tail")
    following = start_client(["follow", "tail"], env_for(server, home))
    try:
        await following.wait_for("from now on", stream="stderr")
        go.write_text("")
        assert await following.finish() == 0, following.err
    finally:
        following.kill_if_running()
    assert following.out.endswith("late\n")


@ensure
async def test_follow_unknown_job_exits_1(server: Server, home: str) -> None:
    run = await client(["follow", "nothing-here"], env_for(server, home))
    assert run.exit_code == 1
    assert "nothing-here" in run.err


# list, kill, logs, watch.


@ensure
async def test_list_json_matches_the_server(server: Server, home: str) -> None:
    env = env_for(server, home)
    await server.run({"jobs": [{"id": "a", "commands": "sleep 60", "queue": "pkg_queue"},
                               {"id": "b", "commands": "sleep 60", "queue": "pkg_queue"}]})
    await wait_running(server, "a")
    listed = await client(["list", "--json"], env)
    assert listed.exit_code == 0, listed.err
    _, body, _ = await server.rest({"action": "list"})
    assert json.loads(listed.out) == body["args"]["jobs"]
    table = await client(["list"], env)
    lines = table.out.splitlines()
    assert lines[0].split() == ["QUEUE", "ID", "STATE", "POS", "STARTED", "COMMAND"]
    assert lines[1].split()[:4] == ["pkg_queue", "a", "running", "0"]
    assert lines[2].split()[:5] == ["pkg_queue", "b", "pending", "1", "-"]
    assert "\x1b[" not in table.out  # not a terminal: no colour
    only = await client(["list", "--json", "--queue", "iocage_queue"], env)
    assert json.loads(only.out) == {}
    killed = await client(["kill", "a", "b"], env)
    assert killed.exit_code == 0


@ensure
async def test_kill_exit_codes(server: Server, home: str) -> None:
    env = env_for(server, home)
    await server.run({"k1": "sleep 60"})
    partly = await client(["kill", "k1", "ghost", "--json"], env)
    assert partly.exit_code == 1
    assert json.loads(partly.out) == {"jobs": ["k1"], "not_found": ["ghost"]}
    none = await client(["kill", "ghost"], env)
    assert none.exit_code == 1
    assert "ghost" in none.err


@ensure
async def test_logs_since_until_and_id(server: Server, home: str) -> None:
    env = env_for(server, home)
    await server.run({"hist": ["echo out one", "sh -c 'echo bad; exit 4'"]})
    await server.wait_finished("hist")
    recent = await client(["logs", "--since", "1h", "--json"], env)
    assert recent.exit_code == 0, recent.err
    records = json.loads(recent.out)["dispatcher"]
    assert [r["process_id"] for r in records.values()] == ["hist"]
    older = await client(["logs", "--until", "1h", "--json"], env)
    assert json.loads(older.out)["dispatcher"] == {}
    table = await client(["logs", "--since", "2h"], env)
    row = table.out.splitlines()[1].split()
    assert row[1:4] == ["hist", "no_queue", "failed(4)"]
    failed = await client(["logs", "--failed", "--json"], env)
    assert next(iter(json.loads(failed.out)["dispatcher"].values()))["process_id"] == "hist"
    whole = await client(["logs", "--id", "hist"], env)
    assert whole.exit_code == 0
    assert "$ echo out one  (exit 0)" in whole.out
    assert "$ sh -c 'echo bad; exit 4'  (exit 4)" in whole.out
    assert "out one" in whole.out and "bad" in whole.out
    assert "failed (exit code 4)" in whole.out
    missing = await client(["logs", "--id", "never-ran"], env)
    assert missing.exit_code == 1
    bad = await client(["logs", "--since", "two hours"], env)
    assert bad.exit_code == 2
    assert "invalid duration" in bad.err


@ensure
async def test_watch_json_lines_parse(server: Server, home: str) -> None:
    watcher = start_client(["watch", "--json"], env_for(server, home))
    try:
        await watcher.wait_for("watching", stream="stderr")
        await server.run({"w1": ["echo hello", "echo again"]})
        await watcher.wait_for('"state": "finished"')
        events = [json.loads(line) for line in watcher.out.splitlines()]
        assert next(e["state"] for e in events) == "pending"
        assert events[-1]["process_id"] == "w1"
        watcher.signal("INT")
        assert await watcher.finish() == 0
    finally:
        watcher.kill_if_running()


@ensure
async def test_watch_lines(server: Server, home: str) -> None:
    watcher = start_client(["watch"], env_for(server, home))
    try:
        await watcher.wait_for("watching", stream="stderr")
        await server.run({"w2": "echo shown"})
        await watcher.wait_for(" finished ")
        lines = watcher.out.splitlines()
        assert any(line.split()[1:4] == ["w2", "pending", "no_queue"] for line in lines), lines
        assert "    shown" in lines
        watcher.signal("INT")
        assert await watcher.finish() == 0
    finally:
        watcher.kill_if_running()


@ensure
async def test_watch_ends_quietly_on_sigterm(server: Server, home: str) -> None:
    watcher = start_client(["watch", "--json"], env_for(server, home))
    try:
        await watcher.wait_for("watching", stream="stderr")
        watcher.signal("TERM")
        assert await watcher.finish() == 0
        assert "sysadm-dispatch:" not in watcher.err, watcher.err
    finally:
        watcher.kill_if_running()


@ensure
async def test_sigterm_while_following_detaches_and_says_how_to_follow(server: Server, home: str) -> None:
    follower = start_client(["run", "--id", "term1", "sleep 30"], env_for(server, home))
    try:
        await wait_running(server, "term1")
        follower.signal("TERM")
        assert await follower.finish() == 130
        assert "follow term1" in follower.err, follower.err
        assert await running(server, "term1")
    finally:
        follower.kill_if_running()
        await server.rest({"action": "kill", "job_id": "term1"})


# Logging in.


@ensure
async def test_password_from_file(server: Server, home: str, tmp_path: Any) -> None:
    path = tmp_path / "pw"
    path.write_text(server.admin_password + "\n")
    env = client_env(home, server.ws_port)
    run = await client(["list", "--password-file", str(path)], env)
    assert run.exit_code == 0, run.err


@ensure
async def test_password_from_config_file(server: Server, home: str, tmp_path: Any) -> None:
    server.add_user("carol", "full", "carol pw")
    (tmp_path / "carol-pw").write_text("carol pw\n")
    conf_dir = os.path.join(home, "config", "sysadm-dispatch")
    os.makedirs(conf_dir)
    conf = os.path.join(conf_dir, "client.conf")
    with open(conf, "w") as f:
        f.write(f"url = ws://127.0.0.1:{server.ws_port}\nuser = carol\npassword_file = {tmp_path / 'carol-pw'}\n")
    os.chmod(conf, 0o600)
    env = client_env(home)
    run = await client(["run", "--id", "by-carol", "true"], env)
    assert run.exit_code == 0, run.err
    os.chmod(conf, 0o644)
    refused = await client(["list"], env)
    assert refused.exit_code == 77
    assert "chmod 600" in refused.err


@ensure
async def test_local_default_login(tmp_path: Any, home: str) -> None:
    # A server whose state directory is the default one of $XDG_STATE_HOME.
    state = tmp_path / "xdg-state"
    server = await start_server(str(state / "sysadm-dispatch"))
    try:
        env = client_env(home, server.ws_port, XDG_STATE_HOME=str(state))
        run = await client(["run", "echo local"], env)
        assert run.exit_code == 0, run.err
        assert run.out == "local\n"
    finally:
        await server.stop()


@ensure
async def test_no_password_and_no_terminal_exits_77(server: Server, home: str) -> None:
    run = await client(["list"], client_env(home, server.ws_port))
    assert run.exit_code == 77
    assert "no terminal" in run.err
    assert run.err.count("\n") == 1


@ensure
async def test_wrong_password_exits_77(server: Server, home: str) -> None:
    run = await client(["list"], client_env(home, server.ws_port, "not it"))
    assert run.exit_code == 77
    assert "login as admin refused" in run.err


@ensure
async def test_read_user_may_list_but_not_run(server: Server, home: str) -> None:
    server.add_user("reader", READ, "reader pw")
    env = client_env(home, server.ws_port, "reader pw", SYSADM_DISPATCH_USER="reader")
    refused = await client(["run", "true"], env)
    assert refused.exit_code == 77
    assert "403" in refused.err
    listed = await client(["list"], env)
    assert listed.exit_code == 0


@ensure
async def test_unreachable_server_exits_69(home: str) -> None:
    run = await client(["list"], client_env(home, free_port(), "x"))
    assert run.exit_code == 69
    assert "cannot connect" in run.err
    assert "Traceback" not in run.err


@ensure
async def test_usage_errors_exit_2(home: str) -> None:
    bad_url = await client(["list"], client_env(home, None, "x", SYSADM_DISPATCH_URL="http://example"))
    assert bad_url.exit_code == 2
    assert "ws://" in bad_url.err
    bad_flag = await client(["list", "--nope"], client_env(home, None, "x"))
    assert bad_flag.exit_code == 2


# The connection dropping while following.


@ensure
async def test_connection_dropped_while_following_exits_75(tmp_path: Any, home: str) -> None:
    ws, rest = free_port(), free_port()
    state = tmp_path / "state"
    process, proto = spawn_twistd(
        ["sysadm-dispatch", "--ws", f"tcp:{ws}:interface=127.0.0.1", "--rest", f"tcp:{rest}:interface=127.0.0.1",
         "--state-dir", str(state)], env=python_env(), cwd=str(tmp_path))
    try:
        await wait_port(ws, proto)
        password = (state / "admin-password").read_text().strip()
        run = start_client(["run", "--id", "orphan", "sh -c 'echo started; exec sleep 60'"],
                           client_env(home, ws, password))
        try:
            await run.wait_for("started\n")
            process.signalProcess("KILL")
            assert await run.finish() == 75
            assert "sysadm-dispatch follow orphan" in run.err
        finally:
            run.kill_if_running()
    finally:
        await ensure_stopped(process, proto)


# wss://


@ensure
async def test_wss_with_cafile(make_server: Any, home: str, tmp_path: Any) -> None:
    from test_tls import make_certificate

    cert, key, _ = make_certificate(str(tmp_path))
    server = await make_server("--tls-cert", cert, "--tls-key", key)
    url = f"wss://127.0.0.1:{server.ws_port}"
    env = client_env(home, None, server.admin_password, SYSADM_DISPATCH_URL=url)
    trusted = await client(["run", "--cafile", cert, "echo secure"], env)
    assert trusted.exit_code == 0, trusted.err
    assert trusted.out == "secure\n"
    untrusted = await client(["list"], env)
    assert untrusted.exit_code == 69, untrusted.err
    assert "certificate verify failed" in untrusted.err
    insecure = await client(["list", "--insecure"], env)
    assert insecure.exit_code == 0, insecure.err
    assert "not verified" in insecure.err


@ensure
async def test_kill_while_following_after_the_token_lapsed(make_server: Any, home: str) -> None:
    # A long follow only listens; its token expires meanwhile, and the kill
    # that Ctrl-C asks for logs in again.
    server = await make_server("--token-ttl", "1")
    run = start_client(["run", "--kill-on-interrupt", "--id", "lapsed", "sh -c 'echo started; exec sleep 60'"],
                       env_for(server, home))
    try:
        await run.wait_for("started\n")
        tokens = server.router.auth.tokens
        await poll(lambda: all(t.expires <= reactor.seconds() for t in tokens._tokens.values()), 10)
        run.signal("INT")
        assert await run.finish() == 143, run.err
    finally:
        run.kill_if_running()
