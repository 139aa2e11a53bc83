"""Benchmark kill latency: from a ``kill`` request to its reply, which comes once the job's processes are gone.

sysadm-dispatch (under twistd) runs a job, and once its ``running`` event
has arrived a WebSocket client asks to kill it and times the reply.  Two
jobs: ``sleep 1000`` (one process), and a shell whose grandchild called
``setsid`` (so the kill needs the search through /proc, not only the group
signal).  In the same run this process measures the raw latency of
``kill(SIGTERM)`` + ``waitpid`` on a ``sleep`` it started itself.  Prints
one JSON line with p50/p99 in milliseconds.  See docs/benchmarks.rst.

    python bench/kill_latency.py [--kills 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from typing import Any

from _common import (
    HOST,
    PASSWORD,
    USERNAME,
    BenchError,
    Stopwatch,
    log,
    percentile,
    run_main,
    start_our_server,
    workspace,
)
from _wsclient import WebSocketClient, WebSocketError

CALL_TIMEOUT = 30.0
JOBS = {
    "single": "sleep 1000",
    "setsid_grandchild": "sh -c 'setsid sleep 1000 & wait'",
}


class Session:
    def __init__(self, client: WebSocketClient) -> None:
        self.client = client
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.number = 0
        self.stash: list[dict[str, Any]] = []
        client.on_message = lambda payload: self.queue.put_nowait(json.loads(payload))

    @classmethod
    async def open(cls, port: int) -> Session:
        session = cls(await WebSocketClient.connect(HOST, port, CALL_TIMEOUT))
        await session.call("rpc", "auth", {"username": USERNAME, "password": PASSWORD})
        await session.call("events", "subscribe", ["dispatcher"])
        return session

    async def call(self, namespace: str, name: str, args: Any) -> dict[str, Any]:
        self.number += 1
        request_id = str(self.number)
        self.client.send(json.dumps({"namespace": namespace, "name": name, "id": request_id, "args": args}))
        while True:
            message = await asyncio.wait_for(self.queue.get(), CALL_TIMEOUT)
            if message.get("id") == request_id:
                if message["name"] != "response":
                    raise BenchError(f"{name} failed: {message}")
                return message
            self.stash.append(message)

    async def running(self, job_id: str) -> None:
        while True:
            if self.stash:
                message = self.stash.pop(0)
            else:
                message = await asyncio.wait_for(self.queue.get(), CALL_TIMEOUT)
            args = message.get("args", {})
            if message.get("namespace") == "events" and args.get("process_id") == job_id \
                    and args.get("state") == "running":
                return


async def ours(port: int, command: str, kills: int) -> list[float]:
    session = await Session.open(port)
    latencies = []
    try:
        for number in range(kills):
            job_id = f"k{number}"
            await session.call("rpc", "dispatcher", {"action": "run", "jobs": [{"id": job_id, "commands": command}]})
            await session.running(job_id)
            await asyncio.sleep(0.02)  # let the command get going (the shell start its grandchild)
            started = time.perf_counter()
            reply = await session.call("rpc", "dispatcher", {"action": "kill", "job_id": job_id})
            latencies.append((time.perf_counter() - started) * 1000)
            if reply["args"]["killed"]["jobs"] != [job_id]:
                raise BenchError(f"kill did not kill: {reply}")
    finally:
        session.client.close()
    return latencies


def raw(kills: int) -> list[float]:
    latencies = []
    for _ in range(kills):
        pid = os.posix_spawn("/bin/sleep", ["sleep", "1000"], os.environ)
        time.sleep(0.005)
        started = time.perf_counter()
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"p50_ms": round(percentile(values, 0.5), 3), "p99_ms": round(percentile(values, 0.99), 3),
            "max_ms": round(values[-1], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="kills per case (default 200)")
    args = parser.parse_args()
    if not 10 <= args.kills <= 10000:
        parser.error("--kills must be in [10, 10000]")
    stopwatch = Stopwatch()
    results: dict[str, Any] = {}
    with workspace("bench-kill-") as (tmp, children):
        server = start_our_server(children, tmp)
        results["raw"] = summary(raw(args.kills))
        log(f"raw: {results['raw']}")
        for name, command in JOBS.items():
            results[name] = summary(asyncio.run(ours(server.ws_port, command, args.kills)))
            log(f"{name}: {results[name]}")
    stopwatch.emit({
        "bench": "kill_latency",
        "kills": args.kills,
        "results": results,
    })
    return 0


if __name__ == "__main__":
    run_main(main, WebSocketError)
