"""Benchmark jobs per second end to end, next to the machine's raw spawn rate.

A WebSocket client logged in to sysadm-dispatch (under twistd) and
subscribed to ``dispatcher`` events keeps 1, 8 or 64 ``/bin/true`` jobs in
flight: each ``finished`` event sends the next ``run`` request.  In the same
run, this process measures the raw rate of ``os.posix_spawn`` + ``waitpid``
of ``/bin/true`` at the same depths, and the ratio ours/raw is reported.
The same client also drives the bare job server of ``bare_servers.py jobs``
(Twisted and Autobahn, spawning with a pipe and a pidfd, one ``finished``
event per job, nothing else): the floor of a job server on this stack,
reported as bare/raw and ours/bare.
With ``--metrics``, a second server of ours runs with its Prometheus
metrics on (``--metrics``) and takes its turn with the others: the cost
of counting, as ``metrics_to_ours``.
Everything is measured twice: with no other client, and with 1,000 idle
WebSocket clients connected (logged in, silent), since a server that looks
at every open descriptor per spawn slows down with connections.  Then
``_spawn_rate.py`` measures the spawn path alone in one process (the
runner, and Twisted's ``spawnProcess`` as the runner used to call it, next
to raw spawns, with and without as many extra descriptors open).  Prints
one JSON line.  See docs/benchmarks.rst.

    python bench/jobs_rate.py [--seconds 5] [--repeat 3] [--idle 1000] [--no-in-process] [--metrics]
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from _common import (
    HOST,
    PASSWORD,
    USERNAME,
    BenchError,
    Stopwatch,
    base_arguments,
    cpu_seconds,
    free_port,
    log,
    parse_base_arguments,
    run_main,
    start_bare_server,
    start_our_server,
    summarize,
    workspace,
)
from _wsclient import WebSocketClient, WebSocketError

DEPTHS = (1, 8, 64)
PROGRAM = "/bin/true"
CALL_TIMEOUT = 30.0
IDLE_CONNECT_BATCH = 50


async def call(client: WebSocketClient, message: dict[str, Any]) -> dict[str, Any]:
    """One request, waiting for the next message (no events are subscribed yet)."""
    reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    client.on_message = lambda payload: reply.done() or reply.set_result(payload)
    client.on_error = lambda error: reply.done() or reply.set_exception(error)
    client.send(json.dumps(message))
    answer: dict[str, Any] = json.loads(await asyncio.wait_for(reply, CALL_TIMEOUT))
    if answer.get("name") != "response":
        raise BenchError(f"request {message.get('name')} failed: {answer}")
    return answer


async def login(port: int) -> tuple[WebSocketClient, str]:
    client = await WebSocketClient.connect(HOST, port, CALL_TIMEOUT)
    reply = await call(
        client, {"namespace": "rpc", "name": "auth", "id": "a", "args": {"username": USERNAME, "password": PASSWORD}}
    )
    return client, reply["args"][0]


async def idle_clients(port: int, token: str | None, count: int) -> list[WebSocketClient]:
    """``count`` connections, each logged in with the token (if any), then left silent."""
    clients: list[WebSocketClient] = []

    async def one() -> None:
        client = await WebSocketClient.connect(HOST, port, CALL_TIMEOUT)
        if token is not None:
            await call(client, {"namespace": "rpc", "name": "auth_token", "id": "t", "args": {"token": token}})
        client.on_message = lambda payload: None
        clients.append(client)

    for start in range(0, count, IDLE_CONNECT_BATCH):
        await asyncio.gather(*(one() for _ in range(min(IDLE_CONNECT_BATCH, count - start))))
    return clients


class JobDriver:
    """Keeps ``depth`` jobs in flight until the deadline; counts finished events."""

    def __init__(self, client: WebSocketClient, prefix: str, depth: int, deadline: float) -> None:
        self.client = client
        self.prefix = prefix
        self.deadline = deadline
        self.number = 0
        self.in_flight = 0
        self.finished = 0
        self.failed: list[str] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        client.on_message = self.on_message
        client.on_error = lambda error: self.done.done() or self.done.set_exception(error)
        for _ in range(depth):
            self.send()

    def send(self) -> None:
        self.number += 1
        self.in_flight += 1
        job = {"id": f"{self.prefix}-{self.number}", "commands": PROGRAM}
        self.client.send(
            json.dumps(
                {
                    "namespace": "rpc",
                    "name": "dispatcher",
                    "id": str(self.number),
                    "args": {"action": "run", "jobs": [job]},
                }
            )
        )

    def on_message(self, payload: bytes) -> None:
        # The load generator parses only what it acts on (replies and the
        # pending and running events are skipped unread), so that its own
        # time takes as little as it can of the machine both servers share.
        if b'"finished"' not in payload and b'"error"' not in payload:
            return
        message = json.loads(payload)
        if message.get("name") == "error":
            self.done.done() or self.done.set_exception(BenchError(f"run refused: {message}"))
            return
        if message.get("namespace") != "events" or message["args"].get("state") != "finished":
            return
        args = message["args"]
        if not args["process_id"].startswith(self.prefix + "-"):
            return
        if args["success"] != "true":
            self.failed.append(args["process_id"])
        self.in_flight -= 1
        self.finished += 1
        if time.perf_counter() < self.deadline:
            self.send()
        elif not self.in_flight and not self.done.done():
            self.done.set_result(None)


async def served(client: WebSocketClient, server_pid: int, depth: int, seconds: float, tag: str) -> dict[str, float]:
    cpu = cpu_seconds(server_pid)
    started = time.perf_counter()
    driver = JobDriver(client, tag, depth, started + seconds)
    await asyncio.wait_for(driver.done, seconds + CALL_TIMEOUT)
    wall = time.perf_counter() - started
    if driver.failed:
        raise BenchError(f"{len(driver.failed)} jobs failed, e.g. {driver.failed[0]}")
    server_cpu = cpu_seconds(server_pid) - cpu
    return {"jobs_per_s": driver.finished / wall, "server_cpu": server_cpu / wall,
            "server_us_per_job": server_cpu / max(driver.finished, 1) * 1e6}


def raw(depth: int, seconds: float) -> dict[str, float]:
    """posix_spawn + waitpid of /bin/true, ``depth`` at a time, in this process."""
    env = dict(os.environ)
    argv = [PROGRAM]
    pending: deque[int] = deque()
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    for _ in range(depth):
        pending.append(os.posix_spawn(PROGRAM, argv, env))
    while pending:
        os.waitpid(pending.popleft(), 0)
        done += 1
        if time.perf_counter() < deadline:
            pending.append(os.posix_spawn(PROGRAM, argv, env))
    return {"jobs_per_s": done / (time.perf_counter() - started)}


async def bench(args: Any, port: int, server_pid: int, bare_port: int, bare_pid: int,
                metrics_server: tuple[int, int] | None = None) -> dict[str, Any]:
    client, token = await login(port)
    await call(client, {"namespace": "events", "name": "subscribe", "id": "s", "args": ["dispatcher"]})
    bare_client = await WebSocketClient.connect(HOST, bare_port, CALL_TIMEOUT)
    clients = {"ours": (client, server_pid), "bare": (bare_client, bare_pid)}
    whos: tuple[str, ...] = ("ours", "bare", "raw")
    if metrics_server is not None:
        metrics_client, metrics_token = await login(metrics_server[0])
        await call(metrics_client, {"namespace": "events", "name": "subscribe", "id": "s", "args": ["dispatcher"]})
        clients["ours_metrics"] = (metrics_client, metrics_server[1])
        whos = ("ours", "ours_metrics", "bare", "raw")
    results: dict[str, Any] = {}
    idle: list[WebSocketClient] = []
    try:
        for case in ("no_idle_clients", f"{args.idle}_idle_clients")[: 2 if args.idle else 1]:
            if case != "no_idle_clients":
                idle = await idle_clients(port, token, args.idle)
                idle += await idle_clients(bare_port, None, args.idle)
                if metrics_server is not None:
                    idle += await idle_clients(metrics_server[0], metrics_token, args.idle)
                log(f"{args.idle} idle clients connected to each server")
            if args.warmup:
                for who in clients:
                    await served(*clients[who], 8, args.warmup, f"warm-{who}-{case}")
            samples: dict[int, dict[str, list[dict[str, float]]]] = {d: {who: [] for who in whos} for d in DEPTHS}
            for repeat in range(args.repeat):
                for depth in DEPTHS:
                    for who in whos[repeat % len(whos):] + whos[: repeat % len(whos)]:
                        if who == "raw":
                            sample = raw(depth, args.seconds)
                        else:
                            sample = await served(*clients[who], depth, args.seconds, f"{who}-{case}-{repeat}-{depth}")
                        samples[depth][who].append(sample)
                        log(f"{case} depth {depth} {who}: {sample['jobs_per_s']:.0f} jobs/s")
            entry: dict[str, Any] = {}
            for depth, runs in samples.items():
                summary = {who: summarize(values) for who, values in runs.items()}
                rate = {who: summary[who]["median"]["jobs_per_s"] for who in whos}
                summary["ratio"] = round(rate["ours"] / rate["raw"], 4)
                summary["bare_ratio"] = round(rate["bare"] / rate["raw"], 4)
                summary["ours_to_bare"] = round(rate["ours"] / rate["bare"], 4)
                if "ours_metrics" in rate:
                    summary["metrics_to_ours"] = round(rate["ours_metrics"] / rate["ours"], 4)
                    # Within each repeat, the two ran one after the other: the
                    # median of those ratios is the least disturbed by drift.
                    pairs = list(zip(runs["ours_metrics"], runs["ours"], strict=True))
                    summary["metrics_to_ours_paired"] = round(
                        statistics.median(m["jobs_per_s"] / o["jobs_per_s"] for m, o in pairs), 4)
                    # The server's CPU time per job: less disturbed by the
                    # other programs of a shared machine than the rate.
                    summary["metrics_cpu_to_ours_paired"] = round(
                        statistics.median(m["server_us_per_job"] / o["server_us_per_job"] for m, o in pairs), 4)
                entry[f"depth_{depth}"] = summary
            results[case] = entry
    finally:
        for idle_client in idle:
            idle_client.close()
        for each, _ in clients.values():
            each.close()
    return results


def scrape_finished(metrics_port: int) -> float:
    """The jobs the metrics server counted as finished (a check that it counted them all)."""
    with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=CALL_TIMEOUT) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("sysadm_dispatch_jobs_finished_total{"))


def main() -> int:
    parser = base_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1000,
                        help="idle WebSocket clients in the second case (0: no second case)")
    parser.add_argument("--metrics", action="store_true",
                        help="also run a server with its Prometheus metrics on, taking turns with the others")
    parser.add_argument("--no-in-process", action="store_true",
                        help="skip the measurement of the spawn path alone (bench/_spawn_rate.py)")
    args = parse_base_arguments(parser)
    if not 0 <= args.idle <= 5000:
        parser.error("--idle must be in [0, 5000] (0: skip the case with idle clients)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.idle + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.idle + 1024), hard))
    stopwatch = Stopwatch()
    with workspace("bench-jobs-") as (tmp, children):
        server = start_our_server(children, tmp)
        bare, bare_port = start_bare_server(children, "jobs", [])
        metrics_server: tuple[int, int] | None = None
        if args.metrics:
            (tmp / "metrics").mkdir()
            metrics_port = free_port()
            with_metrics = start_our_server(children, tmp / "metrics",
                                            ["--metrics", f"tcp:{metrics_port}:interface={HOST}"])
            metrics_server = (with_metrics.ws_port, with_metrics.process.pid)
        results = asyncio.run(bench(args, server.ws_port, server.process.pid, bare_port, bare.pid, metrics_server))
        if args.metrics:
            results["metrics_counted_finished"] = scrape_finished(metrics_port)
    in_process: dict[str, Any] = {}
    if not args.no_in_process:
        log("the spawn path alone, in one process (bench/_spawn_rate.py)")
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve().parent / "_spawn_rate.py"), "--seconds",
             str(max(1, args.seconds // 2)), "--repeat", str(args.repeat), "--fds", str(args.idle)],
            stdout=subprocess.PIPE, check=True, timeout=1800,
        )
        in_process = json.loads(out.stdout.decode().splitlines()[-1])
    stopwatch.emit(
        {
            "bench": "jobs_rate",
            "program": PROGRAM,
            "seconds": args.seconds,
            "repeat": args.repeat,
            "results": results,
            "in_process": in_process,
        }
    )
    return 0


if __name__ == "__main__":
    run_main(main, WebSocketError)
