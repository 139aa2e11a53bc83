"""Benchmark the server's memory while many jobs print a lot at once, and after.

sysadm-dispatch (under twistd) runs ``--jobs`` jobs in one ``run``, each
printing ``--megabytes`` MB of text (``x`` characters, under its log cap),
all at once.  The server's resident memory (``VmRSS``) is sampled every
10 ms from before the run until the jobs are done and some seconds after:
start, peak, and after (5 s after the jobs are done: their records are
written, and the server has given back what it trims).  The output held is jobs x megabytes: the
peak should grow by at most 3 times it, and the memory come back within
100 MB of the start.  Prints one JSON line with medians over ``--repeat``
runs, each on a fresh server.  See docs/benchmarks.rst.

    python bench/output_memory.py [--jobs 100] [--megabytes 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from _common import HOST, PASSWORD, USERNAME, BenchError, Stopwatch, log, run_main, start_our_server, workspace
from _session import JobSession
from _wsclient import WebSocketClient, WebSocketError

CALL_TIMEOUT = 120.0
SETTLE_SECONDS = 5.0
MB = 1_000_000


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError("no VmRSS")


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss(pid)
        self.last = self.peak
        self.running = True

    def run(self) -> None:
        while self.running:
            self.last = rss(self.pid)
            self.peak = max(self.peak, self.last)
            time.sleep(0.01)


async def one_run(port: int, pid: int, jobs: int, megabytes: int) -> dict[str, float]:
    session = JobSession(await WebSocketClient.connect(HOST, port, CALL_TIMEOUT), CALL_TIMEOUT)
    await session.call("rpc", "auth", {"username": USERNAME, "password": PASSWORD})
    try:
        await asyncio.sleep(1.0)
        start = rss(pid)
        sampler = Sampler(pid)
        sampler.start()
        command = f"sh -c \"head -c {megabytes * MB} /dev/zero | tr '\\\\0' x\""
        ids = [f"out{i}" for i in range(jobs)]
        began = time.perf_counter()
        await session.call("rpc", "dispatcher", {"action": "run", "jobs": [
            {"id": job_id, "commands": command} for job_id in ids]})
        while True:
            reply = await session.call("rpc", "dispatcher", {"action": "list"})
            if not reply["args"]["jobs"]:
                break
            await asyncio.sleep(0.05)
        done = time.perf_counter() - began
        record = await session.call("rpc", "logs", {"action": "job", "job_id": ids[-1]})
        if len(record["args"]["process_details"].get(command, "")) != megabytes * MB:
            raise BenchError(f"unexpected record: {str(record)[:300]}")
        session.stash.clear()
        await asyncio.sleep(SETTLE_SECONDS)
        sampler.running = False
        sampler.join()
        after = rss(pid)
        return {"start_mb": start / MB, "peak_mb": sampler.peak / MB, "after_mb": after / MB,
                "peak_growth_mb": (sampler.peak - start) / MB, "after_growth_mb": (after - start) / MB,
                "jobs_done_s": done}
    finally:
        session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100, help="jobs at once (default 100)")
    parser.add_argument("--megabytes", type=int, default=1, help="MB each job prints (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each on a fresh server (default 3)")
    args = parser.parse_args()
    if not 1 <= args.jobs <= 1000 or not 1 <= args.megabytes <= 1:
        parser.error("--jobs must be in [1, 1000] and --megabytes 1 (the default log cap is 1 MiB)")
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be in [1, 20]")
    stopwatch = Stopwatch()
    runs: list[dict[str, float]] = []
    for number in range(args.repeat):
        with workspace("bench-output-memory-") as (tmp, children):
            server = start_our_server(children, tmp)
            runs.append(asyncio.run(one_run(server.ws_port, server.process.pid, args.jobs, args.megabytes)))
            log(f"run {number}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs[-1].items()))
    medians: dict[str, Any] = {key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]}
    stopwatch.emit({"bench": "output_memory", "jobs": args.jobs, "megabytes": args.megabytes,
                    "held_mb": args.jobs * args.megabytes, "medians": medians,
                    "runs": [{key: round(value, 1) for key, value in run.items()} for run in runs]})
    return 0


if __name__ == "__main__":
    run_main(main, WebSocketError)
