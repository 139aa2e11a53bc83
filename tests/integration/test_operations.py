"""
Running the server as a service: ``GET /health`` (starting, a store that
cannot be had, a full disk), the systemd unit and its readiness message,
``--log-format json``, SIGHUP (users file and log file) and where the state
lives.  Real servers: built by makeService on 127.0.0.1:0, or ``twistd -n``
in a process of its own.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
import test_logs
import treq
from conftest import REPO, WSClient, poll, python_env, start_server, with_timeout
from ops_helpers import metrics_port, scrape, value
from twistd_helpers import ensure_stopped, free_port, spawn_twistd, wait_port
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.web.client import HTTPConnectionPool

from sysadm_dispatch import cli, tap
from sysadm_dispatch.auth.users import UserEntry, hash_password, read_users, write_users
from sysadm_dispatch.core.dispatcher import Dispatcher
from sysadm_dispatch.ops.health import HealthCheck, store_reason

ensure = pytest_twisted.ensureDeferred
small_disk = test_logs.small_disk
UNIT = os.path.join(REPO, "contrib", "systemd", "sysadm-dispatch.service")


async def health(port: int) -> tuple[int, Any]:
    response = await with_timeout(treq.get(f"http://127.0.0.1:{port}/health"))
    body = await with_timeout(treq.content(response))
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    return response.code, json.loads(body)


# Health.


@ensure
async def test_health_is_ok_without_login_and_says_nothing_else(server: Any) -> None:
    await with_timeout(server.dispatcher.when_recovered())
    assert await health(server.rest_port) == (200, {"status": "ok"})
    status, body, response = await server.rest(path="/health", method="POST", auth=None)
    assert status == 405 and response.headers.getRawHeaders(b"allow") == [b"GET, HEAD"]
    assert "GET /health" in body["args"]["detail"]
    response = await with_timeout(treq.head(server.rest_url + "/health"))
    assert response.code == 200


@ensure
async def test_health_says_starting_then_store_unavailable_when_the_store_cannot_be_opened(tmp_path: Any) -> None:
    options = tap.Options()
    options.parseOptions(["--ws", "tcp:0:interface=127.0.0.1", "--rest", "tcp:0:interface=127.0.0.1",
                          "--state-dir", str(tmp_path / "state")])
    service = tap.makeService(options, reactor)
    service.privilegedStartService()
    port = (await with_timeout(service.getServiceNamed("rest").when_listening())).getHost().port
    # Bound, but the dispatcher has not started.
    assert await health(port) == (503, {"status": "unavailable", "reason": "starting"})
    # Another process holds the job store: the server starts but cannot use it.
    holder = sqlite3.connect(str(tmp_path / "state" / tap.STORE_FILE), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        service.startService()
        replies: list[Any] = []

        async def settled() -> bool:
            replies.append(await health(port))
            return replies[-1][1].get("reason") != "starting"

        deadline = reactor.seconds() + 30
        while not await settled():
            assert reactor.seconds() < deadline, replies[-1]
            await poll(lambda: True)
        assert replies[-1] == (503, {"status": "unavailable", "reason": "store unavailable"})
    finally:
        holder.close()
        await with_timeout(service.stopService(), 60)


@ensure
async def test_health_through_a_full_disk(small_disk: Any) -> None:
    server = await start_server(str(small_disk / "state"), "--metrics", "tcp:0:interface=127.0.0.1")
    try:
        await with_timeout(server.dispatcher.when_recovered())
        assert await health(server.rest_port) == (200, {"status": "ok"})
        _, samples = await scrape(metrics_port(server))
        assert value(samples, "sysadm_dispatch_store_errors_total") == 0
        test_logs.fill(small_disk / "filler")
        assert await health(server.rest_port) == (503, {"status": "unavailable", "reason": "disk full"})
        _, samples = await scrape(metrics_port(server))
        assert value(samples, "sysadm_dispatch_store_errors_total") >= 1
        os.unlink(small_disk / "filler")
        assert await health(server.rest_port) == (200, {"status": "ok"})
    finally:
        await server.stop()


@ensure
async def test_health_checks_asked_together_share_one_probe(server: Any) -> None:
    store = server.dispatcher.store
    probes = []
    original = store.probe

    def counted() -> Any:
        probes.append(1)
        return original()

    store.probe = counted
    await with_timeout(server.dispatcher.when_recovered())
    check = HealthCheck(server.dispatcher)
    results = await with_timeout(gatherResults([check.check() for _ in range(20)]))
    assert results == [(200, {"status": "ok"})] * 20
    assert len(probes) == 1


@ensure
async def test_health_of_a_dispatcher_without_a_store_starting_and_stopping() -> None:
    dispatcher = Dispatcher(reactor)
    check = HealthCheck(dispatcher)
    assert (await check.check())[1]["reason"] == "starting"
    dispatcher.startService()
    assert await check.check() == (200, {"status": "ok"})
    stopped = dispatcher.stopService()
    assert (await check.check())[1]["reason"] == "stopping"
    await with_timeout(stopped)


def test_store_errors_name_the_reason() -> None:
    assert store_reason("the job store cannot write: database or disk is full") == "disk full"
    assert store_reason("[Errno 28] No space left on device") == "disk full"
    assert store_reason("the job store is unavailable: cannot open x") == "store unavailable"


# systemd.


def unit() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    with open(UNIT) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                key, _, val = line.strip().partition("=")
                settings.setdefault(key, []).append(val)
    return settings


def test_the_unit_runs_twistd_in_the_foreground_and_stops_jobs_first() -> None:
    settings = unit()
    [start] = settings["ExecStart"]
    assert re.fullmatch(r"/\S+/twistd -n --pidfile= sysadm-dispatch .*", start)
    assert "--state-dir /var/lib/sysadm-dispatch" in start
    assert settings["StateDirectory"] == ["sysadm-dispatch"]
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["KillMode"] == ["mixed"]
    grace = float(re.search(r"--kill-grace (\S+)", start).group(1))  # type: ignore[union-attr]
    # Room for the grace and for recording the interrupted jobs.
    assert float(settings["TimeoutStopSec"][0]) >= grace + 10
    assert settings["Restart"] == ["on-failure"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # Nothing that would stop jobs run as root from doing their work.
    for option in ("ProtectSystem", "ProtectHome", "NoNewPrivileges", "PrivateTmp", "ReadOnlyPaths",
                   "CapabilityBoundingSet", "SystemCallFilter", "PrivateDevices", "User"):
        assert option not in settings, option
    # The options in ExecStart are the server's.
    options = tap.Options()
    options.parseOptions(start.split(" sysadm-dispatch ", 1)[1].split())
    assert options["kill-grace"] == grace


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Any) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    # This environment's twistd (the one the unit's ExecStart stands for).
    twistd = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "twistd")
    if not os.access(twistd, os.X_OK):
        twistd = shutil.which("twistd") or "/bin/true"
    # verify also checks that ExecStart's program exists: point it at this one.
    text = open(UNIT).read()
    copy = tmp_path / "sysadm-dispatch.service"
    copy.write_text(re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={twistd}", text))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sysadm-dispatch.service" not in result.stderr, result.stderr


@ensure
async def test_readiness_and_stopping_are_told_to_systemd(tmp_path: Any) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    messages: list[str] = []

    def received() -> list[str]:
        try:
            while True:
                messages.append(notify.recv(4096).decode())
        except BlockingIOError:
            pass
        return messages

    env = python_env()
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    rest_port = free_port()
    process, proto = spawn_twistd(
        ["sysadm-dispatch", "--ws", "tcp:0:interface=127.0.0.1", "--rest", f"tcp:{rest_port}:interface=127.0.0.1",
         "--state-dir", str(tmp_path / "state")], env, str(tmp_path))
    pool = HTTPConnectionPool(reactor)
    try:
        await poll(lambda: received() or proto.ended.called, 30)
        assert messages[0].split("\n")[0] == "READY=1", messages
        # Ready means serving.
        assert await health(rest_port) == (200, {"status": "ok"})
        # The jobs do not get the socket (they cannot speak for the server).
        password = (tmp_path / "state" / "admin-password").read_text().strip()
        body = json.dumps({"action": "run", "jobs": [{"id": "env", "commands": "printenv NOTIFY_SOCKET"}]})
        response = await with_timeout(treq.put(f"http://127.0.0.1:{rest_port}/rpc/dispatcher", data=body.encode(),
                                               auth=("admin", password), pool=pool))
        assert response.code == 200
        await treq.content(response)

        async def finished() -> Any:
            response = await treq.put(f"http://127.0.0.1:{rest_port}/rpc/logs", auth=("admin", password), pool=pool,
                                      data=json.dumps({"action": "job", "job_id": "env"}).encode())
            return json.loads(await treq.content(response))["args"]

        record = None
        deadline = reactor.seconds() + 30
        while not (record and record.get("state") == "finished"):
            assert reactor.seconds() < deadline
            await poll(lambda: True)
            record = await finished()
        assert record["success"] == "false", record
        assert record["process_details"]["return_codes/printenv NOTIFY_SOCKET"] == "1", record
        process.signalProcess("TERM")
        await with_timeout(proto.ended, 30)
        received()
        assert "STOPPING=1" in messages[-1], messages
    finally:
        notify.close()
        await pool.closeCachedConnections()
        await ensure_stopped(process, proto)


# Logs.


@ensure
async def test_json_log_lines_parse_and_carry_the_fields(tmp_path: Any) -> None:
    rest_port = free_port()
    process, proto = spawn_twistd(
        ["sysadm-dispatch", "--ws", "tcp:0:interface=127.0.0.1", "--rest", f"tcp:{rest_port}:interface=127.0.0.1",
         "--state-dir", str(tmp_path / "state"), "--log-format", "json"], python_env(), str(tmp_path))
    pool = HTTPConnectionPool(reactor)
    wrong = "Wr0ng-json-pw-QQ"
    try:
        await wait_port(rest_port, proto)
        password = (tmp_path / "state" / "admin-password").read_text().strip()
        for auth in (("admin", wrong), ("admin", password)):
            body = json.dumps({"action": "run", "jobs": [{"id": "fails", "commands": "false"}]}).encode()
            response = await with_timeout(treq.put(f"http://127.0.0.1:{rest_port}/rpc/dispatcher", data=body,
                                                   auth=auth, pool=pool))
            await treq.content(response)
        await poll(lambda: b"did not succeed" in proto.output)
        process.signalProcess("TERM")
        await with_timeout(proto.ended, 30)
    finally:
        await pool.closeCachedConnections()
        await ensure_stopped(process, proto)
    output = proto.output.decode()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert len(lines) > 5
    for line in lines:
        assert {"time", "level", "event"} <= set(line), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])
        assert line["level"] in ("debug", "info", "warn", "error", "critical")
    [failed] = [line for line in lines if line["event"].startswith("failed login")]
    assert failed["username"] == "admin" and failed["peer"] == "127.0.0.1" and failed["level"] == "info"
    assert failed["namespace"] == "sysadm_dispatch.transports.rest"
    [job] = [line for line in lines if "did not succeed" in line["event"]]
    assert job["job_id"] == "fails" and job["codes"] == [1] and job["killed"] is False
    [created] = [line for line in lines if line["event"].startswith("created users file")]
    assert created["level"] == "warn" and created["path"].endswith("admin-password")
    for secret in (wrong, password, base64.b64encode(f"admin:{password}".encode()).decode()):
        assert secret not in output


def test_log_format_is_text_or_json() -> None:
    options = tap.Options()
    with pytest.raises(Exception, match="--log-format 'xml': choose one of text, json"):
        options.parseOptions(["--log-format", "xml"])


# SIGHUP.


@ensure
async def test_sighup_reads_the_users_file_at_once_and_reopens_the_log_file(tmp_path: Any) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    users = state / "users"
    write_users(str(users), {"admin": UserEntry("admin", "full", hash_password("admin-pw")),
                             "bob": UserEntry("bob", "read", hash_password("old-pw"))})
    logfile = tmp_path / "server.log"
    ws_port = free_port()
    process, proto = spawn_twistd(
        ["--logfile", str(logfile), "sysadm-dispatch", "--ws", f"tcp:{ws_port}:interface=127.0.0.1",
         "--rest", "tcp:0:interface=127.0.0.1", "--state-dir", str(state)], python_env(), str(tmp_path))
    try:
        await wait_port(ws_port, proto)

        async def login(password: str) -> str:
            client = await WSClient.connect(ws_port)
            try:
                return str((await client.login("bob", password))["name"])
            finally:
                await client.close()

        assert await login("old-pw") == "response"
        # Bob's password changes in place: same file, same size, same times, so
        # that only the signal can make the server see it.
        before = os.stat(users)
        entries = read_users(str(users))
        new_hash = hash_password("new-pw")
        assert len(new_hash) == len(entries["bob"].password_hash)
        text = users.read_text().replace(entries["bob"].password_hash, new_hash)
        with open(users, "r+") as f:
            f.write(text)
        os.utime(users, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(users).st_size == before.st_size
        assert await login("new-pw") == "error"

        # logrotate moves the log away, then signals.
        os.rename(logfile, tmp_path / "server.log.1")
        process.signalProcess("HUP")
        # Logged once the file has been read again.
        await poll(lambda: logfile.exists() and "changed: 2 users" in logfile.read_text(), 20)
        assert "SIGHUP" in logfile.read_text()
        assert await login("new-pw") == "response"
        assert await login("old-pw") == "error"
        # The server logs to the new file from now on, and still runs.
        await poll(lambda: "failed login for 'bob'" in logfile.read_text())
        # (The old file has the one failure from before the signal, and nothing after it.)
        assert (tmp_path / "server.log.1").read_text().count("failed login for 'bob'") == 1
        assert "SIGHUP" not in (tmp_path / "server.log.1").read_text()
        assert not proto.ended.called
        process.signalProcess("TERM")
        await with_timeout(proto.ended, 30)
        assert "Server Shut Down" in logfile.read_text()
    finally:
        await ensure_stopped(process, proto)


# Where the state lives.


def test_the_user_commands_use_the_service_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "service"))
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    monkeypatch.setattr(cli, "_read_password", lambda: "pw")
    assert cli.main(["user", "add", "carol", "--role", "read"]) == 0
    assert "carol" in read_users(str(tmp_path / "service" / "users"))
