"""
The server as an administrator runs it: ``twistd -n sysadm-dispatch`` in a
process of its own, on its first run with nothing configured.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any

import pytest
import pytest_twisted
import treq
from conftest import WSClient, pid_alive, poll, python_env, with_timeout
from twistd_helpers import ensure_stopped, free_port, spawn_twistd, wait_port
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

ensure = pytest_twisted.ensureDeferred


@ensure
async def test_first_run_defaults_and_clean_shutdown(tmp_path: Any) -> None:
    env = python_env()
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    ws_port, rest_port = free_port(), free_port()
    process, proto = spawn_twistd(
        ["sysadm-dispatch", "--ws", f"tcp:{ws_port}:interface=127.0.0.1", "--rest", f"tcp:{rest_port}:interface=127.0.0.1"],
        env, str(tmp_path),
    )
    pool = HTTPConnectionPool(reactor)
    try:
        await wait_port(rest_port, proto)
        await wait_port(ws_port, proto)
        # First run: the default state directory, a users file with admin,
        # and the admin password in a file only its owner can read.
        state = tmp_path / "xdg" / "sysadm-dispatch"
        users, password_file = state / "users", state / "admin-password"
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(password_file).st_mode) == 0o600
        assert users.read_text().count("admin:full:scrypt$") == 1
        password = password_file.read_text().strip()
        assert len(password) >= 16
        await poll(lambda: str(password_file) in proto.output.decode())
        assert password not in proto.output.decode()

        # A job over REST whose child and grandchild must not outlive the server.
        pids = tmp_path / "pids"
        command = f"sh -c 'sleep 300 & echo $$ $! > {pids}; wait'"
        body = json.dumps({"action": "run", "jobs": [{"id": "long", "commands": command}]}).encode()
        response = await with_timeout(treq.put(f"http://127.0.0.1:{rest_port}/rpc/dispatcher", data=body,
                                               auth=("admin", password), pool=pool))
        assert response.code == 200, await treq.content(response)
        await treq.content(response)
        await poll(lambda: pids.exists() and len(pids.read_text().split()) == 2)
        child, grandchild = map(int, pids.read_text().split())

        # And the same job is seen over WebSocket.
        client = await WSClient.connect(ws_port)
        await client.login("admin", password)
        reply = await client.call("dispatcher", {"action": "list"})
        assert reply["args"]["jobs"]["no_queue"]["long"]["state"] == "running"
        await client.close()

        process.signalProcess("TERM")
        await with_timeout(proto.ended, 30)
        assert not pid_alive(child)
        assert not pid_alive(grandchild)
        assert b"Traceback" not in proto.output
    finally:
        await pool.closeCachedConnections()
        await ensure_stopped(process, proto)


@ensure
async def test_bad_option_value_is_a_clear_error(tmp_path: Any) -> None:
    env = python_env()
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    process, proto = spawn_twistd(["sysadm-dispatch", "--kill-grace", "soon"], env, str(tmp_path))
    status = await with_timeout(proto.ended, 60)
    assert status.exitCode != 0
    out = proto.output.decode()
    assert "--kill-grace 'soon' is not a number" in out.strip().splitlines()[-1]
    assert "Traceback" not in out
    del process


@ensure
async def test_unusable_state_dir_is_a_clear_error(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    process, proto = spawn_twistd(["sysadm-dispatch", "--state-dir", str(blocker / "state")], python_env(),
                                  str(tmp_path))
    status = await with_timeout(proto.ended, 60)
    assert status.exitCode != 0
    out = proto.output.decode()
    assert "cannot prepare the state directory" in out and "Traceback" not in out
    del process


@pytest.mark.parametrize("held", ["ws", "rest"])
@ensure
async def test_a_port_in_use_stops_the_server_with_one_line(tmp_path: Any, held: str) -> None:
    # A listener that cannot bind: exit non-zero at start, naming the
    # endpoint and the reason, rather than running while listening on nothing.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        ports = {"ws": free_port(), "rest": free_port()}
        ports[held] = holder.getsockname()[1]
        specs = {name: f"tcp:{port}:interface=127.0.0.1" for name, port in ports.items()}
        process, proto = spawn_twistd(["sysadm-dispatch", "--state-dir", str(tmp_path / "state"),
                                       "--ws", specs["ws"], "--rest", specs["rest"]], python_env(), str(tmp_path))
        try:
            status = await with_timeout(proto.ended, 60)
        finally:
            # (A timeout cancels proto.ended, so ensure_stopped would think it over.)
            if process.pid is not None:
                process.signalProcess("KILL")
    finally:
        holder.close()
    out = proto.output.decode()
    assert status.exitCode not in (0, None), out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if "cannot listen" in line]
    assert len(errors) == 1, out
    assert f"--{held} {specs[held]!r}" in errors[0] and "Address already in use" in errors[0], out
