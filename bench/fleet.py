"""Benchmark fleet mode: one Crossbar.io router and N sysadm-dispatch hosts.

Starts a router from contrib/crossbar (its ``crossbar`` program from
``SYSADM_DISPATCH_CROSSBAR`` or ~/.cache/sysadm-dispatch/crossbar-venv) and
N ``twistd sysadm-dispatch --wamp`` servers joined to it, then measures, in
the same run and with the same client stack (Autobahn on Twisted):

* ``list`` on one host, lockstep: through the router (WAMP call) and
  directly over the host's WebSocket (the raw limit): p50/p99 and the ratio;
* ``run`` of ``/bin/true`` on every host through the router, time until
  every host's ``finished`` event has reached one subscriber;
* events fanned in: every host runs J jobs of ``/bin/true`` at once, and
  one subscriber to ``sysadm..events`` counts what arrives per second;
* the router's CPU seconds and resident memory, for a per-host cost.

Prints one JSON line per N.  See docs/fleet.rst.

    python bench/fleet.py [--hosts 10 30] [--calls 300] [--jobs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from autobahn.twisted.component import Component
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.wamp.types import SubscribeOptions
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRIB = os.path.join(REPO, "contrib", "crossbar")
CROSSBAR = os.environ.get("SYSADM_DISPATCH_CROSSBAR") or os.path.expanduser(
    "~/.cache/sysadm-dispatch/crossbar-venv/bin/crossbar")
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise SystemExit(f"a process exited early ({process.returncode}): {process.args!r}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing listens on {port} after {seconds} s")
        time.sleep(0.1)


def private(path: str, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def proc_cpu_rss(pids: list[int]) -> tuple[float, int]:
    """CPU seconds and resident kB of ``pids`` and their children (the router's node and workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    seen = set()
    cpu, rss = 0.0, 0
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            with open(f"/proc/{pid}/status") as f:
                rss += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration):
            continue
    return cpu, rss


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class _WS(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        d, self.factory.waiting = self.factory.waiting, None
        if d is not None:
            d.callback(json.loads(payload))


async def ws_connect(reactor: Any, port: int, password: str) -> Any:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/")
    factory.protocol = _WS
    factory.opened = Deferred()
    factory.waiting = None
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    proto = await factory.opened

    async def call(message: dict[str, Any]) -> Any:
        factory.waiting = Deferred()
        proto.sendMessage(json.dumps(message).encode())
        return await factory.waiting

    reply = await call({"namespace": "rpc", "name": "auth", "id": "a",
                        "args": {"username": "admin", "password": password}})
    assert reply["name"] == "response", reply
    return call, proto


async def wamp_join(reactor: Any, url: str, authid: str, ticket: str) -> tuple[Any, Deferred[Any]]:
    comp = Component(transports=[{"url": url, "max_retries": 0}], realm="sysadm",
                     authentication={"ticket": {"authid": authid, "ticket": ticket}})
    joined: Deferred[Any] = Deferred()
    comp.on("join", lambda session, details: joined.callback(session))
    done = comp.start(reactor)
    return await joined, done


async def measure(reactor: Any, n: int, calls: int, jobs: int, base: str) -> dict[str, Any]:
    cbdir = os.path.join(base, f"router-{n}")
    os.makedirs(cbdir)
    port = free_port()
    with open(os.path.join(CONTRIB, "config.json")) as f:
        config = json.load(f)
    config["workers"][0]["transports"][0]["endpoint"]["port"] = port
    with open(os.path.join(cbdir, "config.json"), "w") as f:
        json.dump(config, f)
    shutil.copy(os.path.join(CONTRIB, "sysadm_router.py"), cbdir)
    names = [f"host{i:02d}" for i in range(n)]
    principals = {name: {"role": "agent", "ticket": f"t-{name}"} for name in names}
    principals["bench"] = {"role": "operator", "ticket": "t-bench"}
    private(os.path.join(cbdir, "principals.json"), json.dumps(principals))
    url = f"ws://127.0.0.1:{port}/"
    log = open(os.path.join(base, f"crossbar-{n}.log"), "wb")
    router = subprocess.Popen([CROSSBAR, "start", "--cbdir", cbdir], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    hosts: list[tuple[str, subprocess.Popen[bytes], int, str]] = []
    env = dict(os.environ, PYTHONPATH=REPO)
    try:
        wait_port(port, router)
        for name in names:
            directory = os.path.join(base, f"{n}-{name}")
            os.makedirs(directory, mode=0o700)
            ticket = private(os.path.join(directory, "ticket"), f"t-{name}\n")
            ws = free_port()
            state = os.path.join(directory, "state")
            process = subprocess.Popen(
                [*TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(directory, "log"), "sysadm-dispatch",
                 "--state-dir", state, "--ws", f"tcp:{ws}:interface=127.0.0.1",
                 "--rest", f"tcp:{free_port()}:interface=127.0.0.1", "--wamp", url, "--wamp-host", name,
                 "--wamp-ticket-file", ticket],
                env=env, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            hosts.append((name, process, ws, state))
        for _, process, ws, _ in hosts:
            wait_port(ws, process)
        session, done = await wamp_join(reactor, url, "bench", "t-bench")

        async def registered(name: str) -> None:
            deadline = reactor.seconds() + 120
            while True:
                try:
                    await session.call(f"sysadm.{name}.rpc", {"namespace": "rpc", "name": "identify"})
                    return
                except Exception:
                    if reactor.seconds() > deadline:
                        raise
                    await task.deferLater(reactor, 0.2, lambda: None)

        for name in names:
            await registered(name)
        cpu_idle0, _ = proc_cpu_rss([router.pid])
        await task.deferLater(reactor, 5, lambda: None)
        cpu_idle1, rss = proc_cpu_rss([router.pid])

        # list: through the router vs directly.
        name, _, ws_port, state = hosts[0]
        with open(os.path.join(state, "admin-password")) as f:
            password = f.read().strip()
        ws_call, proto = await ws_connect(reactor, ws_port, password)
        request = {"namespace": "rpc", "name": "dispatcher", "args": {"action": "list"}}
        for _ in range(20):  # warm-up
            await session.call(f"sysadm.{name}.rpc", request)
            await ws_call(dict(request, id="w"))
        via, direct = [], []
        cpu0, _ = proc_cpu_rss([router.pid])
        for _ in range(calls):
            t = time.perf_counter()
            await session.call(f"sysadm.{name}.rpc", request)
            via.append(time.perf_counter() - t)
        cpu1, _ = proc_cpu_rss([router.pid])
        for i in range(calls):
            t = time.perf_counter()
            await ws_call(dict(request, id=str(i)))
            direct.append(time.perf_counter() - t)
        proto.sendClose(1000)

        # run on every host, until every finished event is in.
        events: list[tuple[str, dict[str, Any]]] = []
        waiting: dict[str, Any] = {}

        def event(args: Any, details: Any = None) -> None:
            events.append((details.topic, args))
            key = (details.topic.split(".")[1], args.get("process_id"))
            if args.get("state") == "finished" and key in waiting:
                waiting.pop(key).callback(None)

        await session.subscribe(event, "sysadm..events", options=SubscribeOptions(match="wildcard",
                                                                                  details_arg="details"))
        t = time.perf_counter()
        ends = []
        for name in names:
            d: Deferred[None] = Deferred()
            waiting[(name, "all-true")] = d
            ends.append(d)
        await DeferredList([session.call(f"sysadm.{name}.rpc", {"namespace": "rpc", "name": "dispatcher",
                                                                "args": {"action": "run", "all-true": ["/bin/true"]}})
                            for name in names], fireOnOneErrback=True, consumeErrors=True)
        await DeferredList(ends)
        run_all = time.perf_counter() - t

        # events fanned in: J jobs per host at once.
        events.clear()
        ends = []
        for name in names:
            for j in range(jobs):
                d = Deferred()
                waiting[(name, f"fan-{j}")] = d
                ends.append(d)
        cpu2, _ = proc_cpu_rss([router.pid])
        t = time.perf_counter()
        await DeferredList([session.call(f"sysadm.{name}.rpc", {
            "namespace": "rpc", "name": "dispatcher",
            "args": {"action": "run", **{f"fan-{j}": ["/bin/true"] for j in range(jobs)}}}) for name in names],
            fireOnOneErrback=True, consumeErrors=True)
        await DeferredList(ends)
        fan_seconds = time.perf_counter() - t
        cpu3, _ = proc_cpu_rss([router.pid])
        fanned = len(events)
        session.leave()
        await done
        return {
            "bench": "fleet", "hosts": n, "calls": calls, "jobs_per_host": jobs,
            "list_router_p50_ms": round(pct(via, 50) * 1000, 3), "list_router_p99_ms": round(pct(via, 99) * 1000, 3),
            "list_direct_p50_ms": round(pct(direct, 50) * 1000, 3),
            "list_direct_p99_ms": round(pct(direct, 99) * 1000, 3),
            "router_over_direct_p50": round(pct(via, 50) / pct(direct, 50), 2),
            "router_cpu_ms_per_call": round((cpu1 - cpu0) / calls * 1000, 3),
            "run_all_true_s": round(run_all, 3),
            "events_fanned_in": fanned, "events_per_s": round(fanned / fan_seconds, 1),
            "router_cpu_ms_per_event": round((cpu3 - cpu2) / max(fanned, 1) * 1000, 3),
            "router_idle_cpu_percent": round((cpu_idle1 - cpu_idle0) / 5 * 100, 2),
            "router_rss_mb": round(rss / 1024, 1),
        }
    finally:
        for _, process, _, _ in hosts:
            stop(process)
        stop(router)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    if not os.access(CROSSBAR, os.X_OK):
        raise SystemExit(f"no crossbar at {CROSSBAR}: python3 -m venv ~/.cache/sysadm-dispatch/crossbar-venv && "
                         "~/.cache/sysadm-dispatch/crossbar-venv/bin/pip install crossbar")

    async def run(reactor: Any) -> None:
        with tempfile.TemporaryDirectory() as base:
            for n in args.hosts:
                print(json.dumps(await measure(reactor, n, args.calls, args.jobs, base)), flush=True)

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
