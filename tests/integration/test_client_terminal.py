"""
The client on a terminal (a pseudo-terminal made by the test) and off one:
colour, the password prompt, and what Ctrl-C does while following.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from client_helpers import client, client_env, start_client
from conftest import Server
from test_client_real import running, wait_running

ensure = pytest_twisted.ensureDeferred


@pytest.fixture
def home(tmp_path: Any) -> str:
    path = tmp_path / "home"
    path.mkdir()
    return str(path)


def env_for(server: Server, home: str, **extra: str) -> dict[str, str]:
    return client_env(home, server.ws_port, server.admin_password, TERM="xterm", **extra)


@ensure
async def test_state_is_coloured_on_a_terminal_only(server: Server, home: str) -> None:
    await server.run({"colourful": "sleep 60"})
    await wait_running(server, "colourful")
    on_terminal = start_client(["list"], env_for(server, home), pty=True)
    try:
        assert await on_terminal.finish() == 0
    finally:
        on_terminal.kill_if_running()
    assert "\x1b[32mrunning\x1b[0m" in on_terminal.out
    no_colour = start_client(["list"], env_for(server, home, NO_COLOR="1"), pty=True)
    try:
        assert await no_colour.finish() == 0
    finally:
        no_colour.kill_if_running()
    assert "running" in no_colour.out and "\x1b[" not in no_colour.out
    piped = await client(["list"], env_for(server, home))
    assert "running" in piped.out and "\x1b[" not in piped.out


@ensure
async def test_password_prompt_on_a_terminal(server: Server, home: str) -> None:
    env = client_env(home, server.ws_port, TERM="xterm")
    run = start_client(["list"], env, pty=True)
    try:
        await run.wait_for("Password for admin at ws://127.0.0.1:")
        run.write(server.admin_password.encode() + b"\n")
        assert await run.finish() == 0, run.out
    finally:
        run.kill_if_running()
    assert server.admin_password not in run.out  # not echoed
    assert "no pending or running jobs" in run.out


@ensure
async def test_ctrl_c_asks_and_kills(server: Server, home: str) -> None:
    run = start_client(["run", "--id", "ask-kill", "sh -c 'echo started; exec sleep 60'"], env_for(server, home),
                       pty=True)
    try:
        await run.wait_for("started")
        run.write(b"\x03")  # Ctrl-C, as the terminal sends it
        await run.wait_for("Kill job ask-kill? [y/N]")
        run.write(b"y\n")
        assert await run.finish() == 143, run.out
    finally:
        run.kill_if_running()
    record = await server.wait_finished("ask-kill")
    assert record["killed"] is True


@ensure
async def test_ctrl_c_answered_no_detaches(server: Server, home: str) -> None:
    run = start_client(["run", "--id", "ask-keep", "sh -c 'echo started; exec sleep 60'"], env_for(server, home),
                       pty=True)
    try:
        await run.wait_for("started")
        run.write(b"\x03")
        await run.wait_for("Kill job ask-keep? [y/N]")
        run.write(b"n\n")
        assert await run.finish() == 130, run.out
    finally:
        run.kill_if_running()
    assert "sysadm-dispatch follow ask-keep" in run.out
    assert await running(server, "ask-keep")
    killed = await client(["kill", "ask-keep"], env_for(server, home))
    assert killed.exit_code == 0


@ensure
async def test_second_ctrl_c_detaches(server: Server, home: str) -> None:
    run = start_client(["run", "--id", "twice", "sh -c 'echo started; exec sleep 60'"], env_for(server, home), pty=True)
    try:
        await run.wait_for("started")
        run.write(b"\x03")
        await run.wait_for("Kill job twice? [y/N]")
        run.write(b"\x03")
        assert await run.finish() == 130, run.out
    finally:
        run.kill_if_running()
    assert "sysadm-dispatch follow twice" in run.out
    assert await running(server, "twice")
    await client(["kill", "twice"], env_for(server, home))


@ensure
async def test_interrupt_without_a_terminal_detaches(server: Server, home: str) -> None:
    run = start_client(["run", "--id", "int-detach", "sh -c 'echo started; exec sleep 60'"], env_for(server, home))
    try:
        await run.wait_for("started\n")
        run.signal("INT")
        assert await run.finish() == 130
    finally:
        run.kill_if_running()
    assert "sysadm-dispatch follow int-detach" in run.err
    assert await running(server, "int-detach")
    await client(["kill", "int-detach"], env_for(server, home))


@ensure
async def test_kill_on_interrupt(server: Server, home: str) -> None:
    run = start_client(["run", "--kill-on-interrupt", "--id", "int-kill", "sh -c 'echo started; exec sleep 60'"],
                       env_for(server, home))
    try:
        await run.wait_for("started\n")
        run.signal("INT")
        assert await run.finish() == 143, run.err
    finally:
        run.kill_if_running()
    record = await server.wait_finished("int-kill")
    assert record["killed"] is True
