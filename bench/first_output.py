"""Benchmark the delay from a job's first output to a subscriber.

A job prints ``time.time()`` once, then sleeps longer than the update
interval; one subscriber notes when the first event carrying that line
arrives (a ``running`` update, or the ``finished`` event if no update
carried it).  The delay is arrival
minus printed time (one clock: the same machine).  Our server runs with the
default ``--update-interval`` (1 s), whose throttle lets a job's first
output out at once; the bare Autobahn server (``bare_broadcast.py``,
``bench/stream``) runs the same program and sends each piece of output as it
comes, in the same run.  Each round measures ``--jobs`` jobs one after the
other on each server, the servers alternating first; p50 and p99 are over
the jobs of a round, the reported figures the medians over the rounds.

Prints one JSON line; see docs/benchmarks.rst.

    python bench/first_output.py [--repeat 3] [--jobs 20] [--no-uvloop] [--bare-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from typing import Any

from _common import Stopwatch, log, percentile, run_main, start_our_server, summarize, workspace
from _wsclient import WebSocketClient, WebSocketError
from events_fanout import (
    FINISHED_PREFIX,
    Target,
    call,
    close_all,
    login,
    quiet,
    ratio,
    start_bare_broadcast,
    subscribe_many,
)
from ws_list import event_loop

SLEEP_AFTER_SECONDS = 1.2
CODE = f"import time\nprint(repr(time.time()), flush=True)\ntime.sleep({SLEEP_AFTER_SECONDS})\n"
ARGV = [sys.executable, "-c", CODE]
COMMAND = shlex.join(ARGV)


async def first_output_delay(control: WebSocketClient, subscriber: WebSocketClient, target: Target,
                             job_id: str) -> float:
    """Seconds from the job's printing its line to the subscriber's receiving it."""
    arrived: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def receive(payload: bytes) -> None:
        now = time.time()
        args = json.loads(payload)["args"]
        if args.get("process_id") != job_id:
            return
        text = args.get("process_details", {}).get(COMMAND, "")
        if text and not arrived.done():
            arrived.set_result((now, text))
        if payload.startswith(FINISHED_PREFIX) and not finished.done():
            finished.set_result(None)

    subscriber.on_message = receive
    if target.name == "bare":
        await call(control, "bench", "stream", {"id": job_id, "argv": ARGV, "command": COMMAND}, "go")
    else:
        await call(control, "rpc", "dispatcher", {"action": "run", "jobs": [{"id": job_id, "commands": [COMMAND]}]},
                   "run")
    when, text = await asyncio.wait_for(arrived, 30)
    await asyncio.wait_for(finished, 30)
    return when - float(text.split("\n")[0])


async def measure(target: Target, jobs: int, round_number: int) -> dict[str, float]:
    control, token = await login(target)
    subscribers: list[WebSocketClient] = []
    try:
        subscribers = await subscribe_many(target, token, 1)
        await quiet(target)
        delays = sorted([await first_output_delay(control, subscribers[0], target, f"first{round_number}-{n}")
                         for n in range(jobs)])
    finally:
        close_all(subscribers)
        control.close()
    return {"p50_ms": percentile(delays, 0.50) * 1e3, "p99_ms": percentile(delays, 0.99) * 1e3,
            "max_ms": delays[-1] * 1e3}


async def bench(args: argparse.Namespace, targets: dict[str, Target]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for target in targets.values():  # warm up
        await measure(target, 2, -1)
    names = list(targets)
    for repeat in range(args.repeat):
        for name in names if repeat % 2 == 0 else names[::-1]:
            sample = await measure(targets[name], args.jobs, repeat)
            runs[name].append(sample)
            log(f"repeat {repeat + 1} {name}: first output p50 {sample['p50_ms']:.1f} ms, "
                f"p99 {sample['p99_ms']:.1f} ms, max {sample['max_ms']:.1f} ms")
    result: dict[str, Any] = {name: summarize(samples) for name, samples in runs.items()}
    if "ours" in runs:
        result["ratio"] = ratio(runs["ours"], runs["bare"], ["p50_ms", "p99_ms"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs per round and server (default 20)")
    parser.add_argument("--no-uvloop", action="store_true", help="drive the clients with asyncio's own loop")
    parser.add_argument("--bare-only", action="store_true", help="measure only the bare server")
    args = parser.parse_args()
    if not 1 <= args.repeat <= 50 or not 2 <= args.jobs <= 1000:
        parser.error("--repeat must be in [1, 50] and --jobs in [2, 1000]")
    loop_name, run = event_loop(allow_uvloop=not args.no_uvloop)
    stopwatch = Stopwatch()
    with workspace("bench-first-output-") as (tmp, children):
        targets: dict[str, Target] = {}
        if not args.bare_only:
            server = start_our_server(children, tmp)  # the default --update-interval
            targets["ours"] = Target("ours", server.process.pid, server.ws_port)
        targets["bare"] = start_bare_broadcast(children, 16)
        results = run(bench(args, targets))
    stopwatch.emit({"bench": "first_output", "repeat": args.repeat, "jobs": args.jobs, "update_interval": 1.0,
                    "client_loop": loop_name, **results})
    return 0


if __name__ == "__main__":
    run_main(main, WebSocketError)
