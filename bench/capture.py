"""Benchmark output capture: a job that floods stdout, next to a raw pipe read.

sysadm-dispatch (under twistd) runs ``head -c SIZE /dev/zero`` as a job; the
time from the ``run`` request to the ``finished`` event gives its capture
rate, while this process samples the server's resident memory.  In the same
run, this process starts the same command itself and reads its stdout pipe
to the end (1 MiB reads from a 1 MiB pipe, the way the server reads), which
is the machine's limit; the ratio ours/raw is reported.  Prints one JSON
line.  See docs/benchmarks.rst.

    python bench/capture.py [--mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    Stopwatch,
    log,
    run_main,
    start_our_server,
    workspace,
)
from _session import JobSession
from _wsclient import WebSocketError

CALL_TIMEOUT = 30.0
READ_SIZE = 1 << 20
PIPE_SIZE = 1 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for {pid}")


def raw(size: int) -> float:
    """Seconds to read ``size`` bytes of ``head -c`` through a pipe."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    started = time.perf_counter()
    process = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=write_fd, stdin=subprocess.DEVNULL)
    os.close(write_fd)
    total = 0
    while chunk := os.read(read_fd, READ_SIZE):
        total += len(chunk)
    os.close(read_fd)
    process.wait()
    elapsed = time.perf_counter() - started
    if total != size:
        raise BenchError(f"raw read {total} bytes, expected {size}")
    return elapsed


async def ours(session: JobSession, server_pid: int, size: int, number: int) -> dict[str, float]:
    command = f"head -c {size} /dev/zero"
    job_id = f"flood-{number}"
    baseline = rss(server_pid)
    peak = baseline
    started = time.perf_counter()
    await session.call("rpc", "dispatcher", {"action": "run", "jobs": [{"id": job_id, "commands": command}]})
    waiting = asyncio.ensure_future(session.event(job_id, "finished", 300))
    while not waiting.done():
        peak = max(peak, rss(server_pid))
        await asyncio.wait([waiting], timeout=0.01)
    record = waiting.result()
    elapsed = time.perf_counter() - started
    if record["success"] != "true":
        raise BenchError(f"flood job failed: {record}")
    text = record["process_details"][command]
    if "bytes of output dropped" not in text and size > (1 << 20):
        raise BenchError("the capped log has no marker of dropped bytes")
    return {"seconds": elapsed, "rss_growth_mib": (peak - baseline) / (1 << 20)}


async def bench(args: argparse.Namespace, port: int, server_pid: int) -> dict[str, Any]:
    size = args.mib << 20
    session = await JobSession.open(port, CALL_TIMEOUT)
    samples: dict[str, list[dict[str, float]]] = {"ours": [], "raw": []}
    try:
        # The first flood after the server started warms it up; its memory growth is reported apart.
        first = await ours(session, server_pid, size, 0)
        log(f"first flood: server RSS +{first['rss_growth_mib']:.1f} MiB")
        for repeat in range(args.repeat):
            order = ("ours", "raw") if repeat % 2 == 0 else ("raw", "ours")
            for who in order:
                if who == "ours":
                    sample = await ours(session, server_pid, size, repeat + 1)
                else:
                    sample = {"seconds": raw(size)}
                sample["mb_per_s"] = size / sample["seconds"] / 1e6
                samples[who].append(sample)
                log(f"{who}: {sample['mb_per_s']:.0f} MB/s" + (
                    f", server RSS +{sample['rss_growth_mib']:.1f} MiB" if "rss_growth_mib" in sample else ""))
    finally:
        session.close()
    result: dict[str, Any] = {}
    for who, values in samples.items():
        keys = values[0].keys()
        result[who] = {
            "median": {key: round(statistics.median(v[key] for v in values), 3) for key in keys},
            "runs": {key: [round(v[key], 3) for v in values] for key in keys},
        }
    result["ratio"] = round(result["ours"]["median"]["mb_per_s"] / result["raw"]["median"]["mb_per_s"], 4)
    result["rss_growth_max_mib"] = round(max(v["rss_growth_mib"] for v in samples["ours"]), 1)
    result["first_flood_rss_growth_mib"] = round(first["rss_growth_mib"], 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB the job writes (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs; medians are reported (default 3)")
    args = parser.parse_args()
    if not 1 <= args.mib <= 65536:
        parser.error("--mib must be in [1, 65536]")
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be in [1, 50]")
    stopwatch = Stopwatch()
    with workspace("bench-capture-") as (tmp, children):
        server = start_our_server(children, tmp)
        result = asyncio.run(bench(args, server.ws_port, server.process.pid))
    stopwatch.emit({
        "bench": "capture",
        "bytes": args.mib << 20,
        "repeat": args.repeat,
        "results": result,
    })
    return 0


if __name__ == "__main__":
    run_main(main, WebSocketError)
