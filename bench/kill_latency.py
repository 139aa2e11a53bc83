"""Benchmark kill latency: from a ``kill`` request to its reply, which comes once the job's processes are gone.

sysadm-dispatch (under twistd) runs a job, and once its ``running`` event
has arrived a WebSocket client asks to kill it and times the reply.  Two
jobs: ``sleep 1000`` (one process), and a shell whose grandchild called
``setsid`` (so the kill needs the search through /proc, not only the group
signal); the grandchild writes its pid to a file, and each kill checks that
it was alive before and is gone when the reply comes.  In the same run this process measures the raw latency of
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
from pathlib import Path
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
#: The jobs; ``{pids}`` is a file the grandchild's pid is written to.
JOBS = {
    "single": "sleep 1000",
    "setsid_grandchild": "sh -c 'setsid sleep 1000 & echo $! > {pids}; wait'",
}
GRANDCHILD_WAIT = 5.0


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def grandchild(path: Path) -> int:
    deadline = time.monotonic() + GRANDCHILD_WAIT
    while True:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return int(text)
        if time.monotonic() > deadline:
            raise BenchError(f"the job's grandchild did not write its pid to {path}")
        await asyncio.sleep(0.002)


async def ours(port: int, command: str, kills: int, tmp: Path) -> list[float]:
    session = await JobSession.open(port, CALL_TIMEOUT)
    latencies = []
    try:
        for number in range(kills):
            job_id = f"k{number}"
            pids = tmp / f"{job_id}.pid"
            job_command = command.format(pids=pids)
            await session.call("rpc", "dispatcher", {"action": "run", "jobs": [{"id": job_id,
                                                                               "commands": job_command}]})
            await session.event(job_id, "running")
            await asyncio.sleep(0.02)  # let the command get going (the shell start its grandchild)
            pid = await grandchild(pids) if "{pids}" in command else None
            if pid is not None and not alive(pid):
                raise BenchError(f"job {job_id}: its grandchild {pid} is not running before the kill")
            started = time.perf_counter()
            reply = await session.call("rpc", "dispatcher", {"action": "kill", "job_id": job_id})
            latencies.append((time.perf_counter() - started) * 1000)
            if reply["args"]["killed"]["jobs"] != [job_id]:
                raise BenchError(f"kill did not kill: {reply}")
            if pid is not None and alive(pid):
                raise BenchError(f"job {job_id}: its grandchild {pid} is still alive after the kill reply")
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
            results[name] = summary(asyncio.run(ours(server.ws_port, command, args.kills, tmp)))
            log(f"{name}: {results[name]}")
    stopwatch.emit({
        "bench": "kill_latency",
        "kills": args.kills,
        "results": results,
    })
    return 0


if __name__ == "__main__":
    run_main(main, WebSocketError)
