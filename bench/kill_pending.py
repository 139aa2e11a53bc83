"""Benchmark killing many pending jobs in one request, and how long other clients wait meanwhile.

sysadm-dispatch (under twistd) gets a job that runs ``sleep`` in
``pkg_queue`` (one at a time), then ``--pending`` jobs behind it, 1,000 per
``run``.  One WebSocket client kills all the pending ones in one request
while another sends ``list`` after ``list``, each as soon as the previous
reply came.  Measured: the kill's duration, and the wait of each ``list``
sent during it; next to them, in the same run, the wait of ``list`` on the
idle server (the same requests with nothing else to do: the floor).  Then,
for comparison, ``--running`` jobs of ``sleep`` in ``no_queue``, all
running, killed in one request (the reply comes once their processes are
gone).  Prints one JSON line with medians over ``--repeat`` runs.  See
docs/benchmarks.rst.

    python bench/kill_pending.py [--pending 10000] [--running 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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
from _session import JobSession
from _wsclient import WebSocketClient, WebSocketError

CALL_TIMEOUT = 120.0
IDLE_LISTS = 200


async def session(port: int) -> JobSession:
    """Logged in, not subscribed: replies only."""
    opened = JobSession(await WebSocketClient.connect(HOST, port, CALL_TIMEOUT), CALL_TIMEOUT)
    await opened.call("rpc", "auth", {"username": USERNAME, "password": PASSWORD})
    return opened


async def list_wait(lister: JobSession) -> float:
    started = time.perf_counter()
    await lister.call("rpc", "dispatcher", {"action": "list"})
    return (time.perf_counter() - started) * 1000


async def one_run(port: int, pending: int, number: int) -> dict[str, float]:
    control, lister = await session(port), await session(port)
    try:
        idle = sorted([await list_wait(lister) for _ in range(IDLE_LISTS)])
        ids = [f"r{number}-{i}" for i in range(pending)]
        for first in range(0, pending, 1000):
            await control.call("rpc", "dispatcher", {"action": "run", "jobs": [
                {"id": job_id, "commands": "true", "queue": "pkg_queue"} for job_id in ids[first:first + 1000]]})
        started = time.perf_counter()
        kill = asyncio.ensure_future(control.call("rpc", "dispatcher", {"action": "kill", "job_id": ids}))
        waits = []
        while not kill.done():
            waits.append(await list_wait(lister))
        reply = await kill
        elapsed = (time.perf_counter() - started) * 1000
        if len(reply["args"]["killed"]["jobs"]) != pending:
            raise BenchError(f"kill did not kill them all: {len(reply['args']['killed']['jobs'])}")
        waits.sort()
        return {"kill_ms": elapsed, "lists_during": len(waits), "during_p50_ms": percentile(waits, 0.5),
                "during_max_ms": waits[-1], "idle_p50_ms": percentile(idle, 0.5), "idle_max_ms": idle[-1]}
    finally:
        control.close()
        lister.close()


async def kill_running(port: int, count: int, number: int) -> float:
    control = await session(port)
    try:
        ids = [f"s{number}-{i}" for i in range(count)]
        await control.call("rpc", "dispatcher", {"action": "run", "jobs": [
            {"id": job_id, "commands": "sleep 1000"} for job_id in ids]})
        deadline = time.monotonic() + 60
        while True:
            jobs = (await control.call("rpc", "dispatcher", {"action": "list"}))["args"]["jobs"].get("no_queue", {})
            if sum(1 for job_id in ids if jobs.get(job_id, {}).get("state") == "running") == count:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{count} jobs were not all running within 60 s")
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        reply = await control.call("rpc", "dispatcher", {"action": "kill", "job_id": ids})
        elapsed = (time.perf_counter() - started) * 1000
        if len(reply["args"]["killed"]["jobs"]) != count:
            raise BenchError("kill did not kill all the running jobs")
        return elapsed
    finally:
        control.close()


async def blocker(port: int) -> None:
    control = await session(port)
    try:
        await control.call("rpc", "dispatcher", {"action": "run", "jobs": [
            {"id": "blocker", "commands": "sleep 100000", "queue": "pkg_queue"}]})
    finally:
        control.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, default=10000, help="pending jobs killed per run (default 10000)")
    parser.add_argument("--running", type=int, default=500, help="running jobs killed per run (default 500)")
    parser.add_argument("--repeat", type=int, default=5, help="runs; medians are reported (default 5)")
    args = parser.parse_args()
    if not 1000 <= args.pending <= 10000 or args.pending % 1000:
        parser.error("--pending must be a multiple of 1000 in [1000, 10000]")
    if not 1 <= args.running <= 1000:
        parser.error("--running must be in [1, 1000]")
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be in [1, 50]")
    stopwatch = Stopwatch()
    runs: list[dict[str, float]] = []
    with workspace("bench-kill-pending-") as (tmp, children):
        server = start_our_server(children, tmp)
        asyncio.run(blocker(server.ws_port))
        for number in range(args.repeat):
            runs.append(asyncio.run(one_run(server.ws_port, args.pending, number)))
            runs[-1]["kill_running_ms"] = asyncio.run(kill_running(server.ws_port, args.running, number))
            log(f"run {number}: {runs[-1]}")
    medians: dict[str, Any] = {key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]}
    stopwatch.emit({"bench": "kill_pending", "pending": args.pending, "running": args.running, "repeat": args.repeat, "medians": medians,
                    "runs": [{key: round(value, 1) for key, value in run.items()} for run in runs]})
    return 0


if __name__ == "__main__":
    run_main(main, WebSocketError)
