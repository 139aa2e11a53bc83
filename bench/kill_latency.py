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
import os
import signal
import time
from typing import Any

from _common import (
    BenchError,
    Stopwatch,
    log,
    percentile,
    run_main,
    start_our_server,
    workspace,
)
from _session import JobSession
from _wsclient import WebSocketError

CALL_TIMEOUT = 30.0
JOBS = {
    "single": "sleep 1000",
    "setsid_grandchild": "sh -c 'setsid sleep 1000 & wait'",
}


async def ours(port: int, command: str, kills: int) -> list[float]:
    session = await JobSession.open(port, CALL_TIMEOUT)
    latencies = []
    try:
        for number in range(kills):
            job_id = f"k{number}"
            await session.call("rpc", "dispatcher", {"action": "run", "jobs": [{"id": job_id, "commands": command}]})
            await session.event(job_id, "running")
            await asyncio.sleep(0.02)  # let the command get going (the shell start its grandchild)
            started = time.perf_counter()
            reply = await session.call("rpc", "dispatcher", {"action": "kill", "job_id": job_id})
            latencies.append((time.perf_counter() - started) * 1000)
            if reply["args"]["killed"]["jobs"] != [job_id]:
                raise BenchError(f"kill did not kill: {reply}")
    finally:
        session.close()
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
