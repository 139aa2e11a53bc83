"""
Crashes and restarts of a real server: ``twistd -n sysadm-dispatch`` in a
process of its own, killed with SIGKILL (or stopped with SIGTERM) at chosen
moments, then started again on the same state directory.

The rules proven (docs/persistence.rst): every job whose ``run`` was
acknowledged and that had not started is pending again after the restart, in
its original queue order, and runs exactly once; every job that was running
is recorded as finished with ``interrupted: true`` and ``success: "false"``
and is not run again; the history of finished jobs is intact.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest_twisted
import treq
from conftest import BOTH_SPAWNERS, WSClient, poll, python_env, with_timeout
from twistd_helpers import free_port, spawn_twistd, wait_port
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool

ensure = pytest_twisted.ensureDeferred


class Twistd:
    """One run of the server on a state directory; REST and WebSocket clients for it."""

    def __init__(self, state_dir: str, spawner: str | None = None) -> None:
        self.state_dir = state_dir
        self.ws_port, self.rest_port = free_port(), free_port()
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.clients: list[WSClient] = []
        self.password = ""
        args = ["sysadm-dispatch", "--state-dir", state_dir, "--kill-grace", "1",
                "--ws", f"tcp:{self.ws_port}:interface=127.0.0.1",
                "--rest", f"tcp:{self.rest_port}:interface=127.0.0.1"]
        if spawner is not None:
            args += ["--spawner", spawner]
        self.process, self.proto = spawn_twistd(args, python_env(), state_dir)

    async def ready(self) -> Twistd:
        await wait_port(self.rest_port, self.proto, 0.02)
        with open(os.path.join(self.state_dir, "admin-password")) as f:
            self.password = f.read().strip()
        return self

    @property
    def log(self) -> str:
        return self.proto.output.decode(errors="replace")

    async def rest(self, body: Any, name: str = "dispatcher") -> tuple[int, Any]:
        response = await with_timeout(treq.put(f"http://127.0.0.1:{self.rest_port}/rpc/{name}",
                                               data=json.dumps(body).encode(), auth=("admin", self.password),
                                               pool=self.pool))
        return response.code, json.loads(await with_timeout(treq.content(response)))

    async def run(self, jobs: list[dict[str, Any]]) -> None:
        status, body = await self.rest({"action": "run", "jobs": jobs})
        assert status == 200, body

    async def record(self, job_id: str) -> dict[str, Any]:
        status, body = await self.rest({"action": "job", "job_id": job_id}, "logs")
        assert status == 200, body
        return dict(body["args"])

    async def active(self) -> dict[str, Any]:
        status, body = await self.rest({"action": "list"})
        assert status == 200, body
        return {job_id: job for queue in body["args"]["jobs"].values() for job_id, job in queue.items()}

    async def ws(self) -> WSClient:
        client = await WSClient.connect(self.ws_port)
        self.clients.append(client)
        reply = await client.login("admin", self.password)
        assert reply["name"] == "response", reply
        return client

    async def sigkill(self) -> None:
        self.process.signalProcess("KILL")
        await self.gone()

    async def stop(self) -> None:
        """A graceful stop (SIGTERM), as a service manager does it."""
        self.process.signalProcess("TERM")
        status = await self.gone()
        # twistd ends with the signal it was stopped by, once it has shut down.
        assert status.exitCode == 0 or status.signal == signal.SIGTERM, self.log
        assert "Server Shut Down." in self.log, self.log
        assert "Traceback" not in self.log, self.log

    async def gone(self) -> Any:
        status = await with_timeout(self.proto.ended, 30)
        for client in self.clients:
            await with_timeout(client.lost)
        await self.pool.closeCachedConnections()
        return status

    async def cleanup(self) -> None:
        if not self.proto.ended.called:
            self.process.signalProcess("KILL")
            await self.gone()


def lines(path: Any) -> list[str]:
    return path.read_text().split() if path.exists() else []


def kill_groups(*pid_files: Any) -> None:
    """Processes a SIGKILLed server left behind (each in its own process group)."""
    for path in pid_files:
        for pid in lines(path):
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def long_job(marker: Any) -> str:
    """A command that records each time it starts, then runs until killed."""
    return f"sh -c 'echo $$ >> {marker}; exec sleep 300'"


def appends(path: Any, word: str) -> str:
    return f"sh -c 'echo {word} >> {path}'"


async def servers(tmp_path: Any, body: Callable[[list[Twistd]], Any]) -> None:
    """Run ``body`` with a list that it fills with servers; every one is gone afterwards."""
    started: list[Twistd] = []
    try:
        await body(started)
    finally:
        for server in started:
            await server.cleanup()


async def start(tmp_path: Any, started: list[Twistd], spawner: str | None = None) -> Twistd:
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    for attempt in range(3):
        server = Twistd(str(state), spawner)
        started.append(server)
        try:
            return await server.ready()
        except AssertionError:
            # Another program took a port between free_port() and twistd binding it.
            if "CannotListenError" not in server.log or attempt == 2:
                raise
    raise AssertionError("unreachable")


def assert_interrupted(record: dict[str, Any], job_id: str) -> None:
    assert record["process_id"] == job_id
    assert record["state"] == "finished"
    assert record["interrupted"] is True
    assert record["success"] == "false"
    assert record["killed"] is False
    assert "time_finished" in record["process_details"]


async def _eventually(request: Callable[[], Any]) -> dict[str, Any]:
    """
    The first finished record answered (``logs job`` answers a running job's
    live record too, and the history has the finished one a moment after the
    job ends).
    """
    found: list[dict[str, Any]] = []

    async def ok() -> bool:
        status, body = await request()
        finished = status == 200 and body["args"].get("state") == "finished"
        if finished:
            found.append(body["args"])
        return finished

    for _ in range(500):
        if await ok():
            return found[0]
        await with_timeout(_sleep(0.02))
    raise AssertionError("no finished record appeared")


def _sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


@ensure
async def test_sigkill_while_a_job_runs(tmp_path: Any) -> None:
    runs = tmp_path / "runs"

    async def body(started: list[Twistd]) -> None:
        first = await start(tmp_path, started)
        await first.run([{"id": "done", "commands": ["echo finished before the crash"]}])
        # The finished job's history is written before the server dies.
        done = await _eventually(lambda: first.rest({"action": "job", "job_id": "done"}, "logs"))
        await first.run([{"id": "runner", "commands": [long_job(runs), "echo never"]}])
        await poll(lambda: len(lines(runs)) == 1)
        await first.sigkill()
        kill_groups(runs)

        second = await start(tmp_path, started)
        assert_interrupted(await second.record("runner"), "runner")
        assert await second.active() == {}
        assert len(lines(runs)) == 1, "an interrupted job was run again"
        assert await second.record("done") == done
        assert done["success"] == "true"
        assert done["process_details"]["echo finished before the crash"] == "finished before the crash\n"
        await second.stop()

    await servers(tmp_path, body)
    kill_groups(runs)


@ensure
async def test_sigkill_after_acknowledgement_before_start(tmp_path: Any) -> None:
    runs, order = tmp_path / "runs", tmp_path / "order"

    async def body(started: list[Twistd]) -> None:
        first = await start(tmp_path, started)
        await first.run([{"id": "blocker", "commands": long_job(runs), "queue": "pkg_queue"}])
        await poll(lambda: len(lines(runs)) == 1)
        await first.run([{"id": f"q{i}", "commands": appends(order, f"q{i}"), "queue": "pkg_queue"}
                         for i in range(3)])
        await first.run([{"id": "q3", "commands": appends(order, "q3"), "queue": "pkg_queue"}])
        active = await first.active()
        assert [active[f"q{i}"]["state"] for i in range(4)] == ["pending"] * 4
        await first.sigkill()
        kill_groups(runs)

        second = await start(tmp_path, started)
        await poll(lambda: len(lines(order)) == 4)
        assert lines(order) == ["q0", "q1", "q2", "q3"]
        assert_interrupted(await second.record("blocker"), "blocker")
        for i in range(4):
            record = await _eventually(lambda i=i: second.rest({"action": "job", "job_id": f"q{i}"}, "logs"))
            assert record["success"] == "true"
        assert len(lines(runs)) == 1
        await second.stop()
        assert lines(order) == ["q0", "q1", "q2", "q3"], "a job ran twice"

    await servers(tmp_path, body)
    kill_groups(runs)


@ensure
async def test_sigkill_during_a_burst_of_run_requests(tmp_path: Any) -> None:
    runs, order = tmp_path / "runs", tmp_path / "order"
    connections, depth, kill_after = 4, 4, 40

    async def body(started: list[Twistd]) -> None:
        first = await start(tmp_path, started)
        # Everything in the burst waits behind a running job, in one queue.
        await first.run([{"id": "blocker", "commands": long_job(runs), "queue": "pkg_queue"}])
        await poll(lambda: len(lines(runs)) == 1)
        clients = [await first.ws() for _ in range(connections)]
        sent: list[list[str]] = [[] for _ in clients]
        acked: set[str] = set()
        killed: Deferred[None] = Deferred()

        def send(n: int) -> None:
            client = clients[n]
            job_id = f"c{n}-{len(sent[n])}"
            sent[n].append(job_id)
            d: Deferred[dict[str, Any]] = Deferred()
            client.replies[job_id] = d
            d.addCallback(replied, n, job_id)
            client.send({"namespace": "rpc", "name": "dispatcher", "id": job_id, "args": {
                "action": "run", "jobs": [{"id": job_id, "commands": appends(order, job_id), "queue": "pkg_queue"}]}})

        def replied(reply: dict[str, Any], n: int, job_id: str) -> None:
            if killed.called:
                return
            assert reply["args"] == {"started": [job_id]}, reply
            acked.add(job_id)
            if len(acked) >= kill_after:
                first.process.signalProcess("KILL")
                killed.callback(None)
            else:
                send(n)

        for n in range(connections):
            for _ in range(depth):
                send(n)
        await with_timeout(killed)
        await first.gone()
        kill_groups(runs)
        in_flight = sum(len(s) for s in sent) - len(acked)
        assert in_flight > 0

        second = await start(tmp_path, started)
        await poll(lambda: acked <= set(lines(order)))

        async def idle() -> bool:
            return await second.active() == {}

        for _ in range(500):
            if await idle():
                break
            await with_timeout(_sleep(0.02))
        assert await second.active() == {}
        ran = lines(order)
        assert len(ran) == len(set(ran)), "a job ran twice"
        assert acked <= set(ran), "an acknowledged job was lost"
        everything = {job_id for s in sent for job_id in s}
        assert set(ran) <= everything
        for n in range(connections):
            mine = [job_id for job_id in ran if job_id.startswith(f"c{n}-")]
            assert mine == [job_id for job_id in sent[n] if job_id in mine], "queue order was not kept"
            # What was stored is a prefix of what this connection sent.
            assert mine == sent[n][: len(mine)]
        assert_interrupted(await second.record("blocker"), "blocker")
        assert len(lines(runs)) == 1
        await second.stop()

    await servers(tmp_path, body)
    kill_groups(runs)


@BOTH_SPAWNERS
@ensure
async def test_graceful_stop_keeps_pending_and_interrupts_running(tmp_path: Any, spawner: str) -> None:
    runs, order = tmp_path / "runs", tmp_path / "order"

    async def body(started: list[Twistd]) -> None:
        first = await start(tmp_path, started, spawner)
        await first.run([{"id": "blocker", "commands": long_job(runs), "queue": "pkg_queue"},
                         {"id": "p0", "commands": appends(order, "p0"), "queue": "pkg_queue"},
                         {"id": "p1", "commands": appends(order, "p1"), "queue": "pkg_queue"}])
        await poll(lambda: len(lines(runs)) == 1)
        pid = int(lines(runs)[0])
        await first.stop()
        # Killed with its server, not left behind.
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] in "ZX"
        assert lines(order) == []

        second = await start(tmp_path, started)
        await poll(lambda: len(lines(order)) == 2)
        assert lines(order) == ["p0", "p1"]
        record = await second.record("blocker")
        assert_interrupted(record, "blocker")
        assert record["signal"] == "SIGTERM"
        assert len(lines(runs)) == 1
        await second.stop()

    await servers(tmp_path, body)
    kill_groups(runs)
