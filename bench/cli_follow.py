"""Benchmark the command-line client: how late it prints a job's output, and how fast it starts.

Delay: one server of ours (``--update-interval 0.05``); per repeat, a bare
WebSocket subscriber (the minimal client of ``_wsclient.py``) and
``sysadm-dispatch run`` follow the same job, which prints its own clock
every 20 ms.  For each output line: the time it was read from the client's
standard output (a pipe), or decoded from an event by the bare subscriber,
minus the time the job printed it.

Start-up: wall time of ``sysadm-dispatch list`` (a whole run: start, connect,
log in, request, print), next to ``python -c pass``, the imports the client
needs for it alone, and ``curl`` of the same request over REST.  Prints one JSON line; see docs/benchmarks.rst.

    python bench/cli_follow.py [--repeat 3] [--starts 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import (
    BIN_DIR,
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
from _wsclient import WebSocketError
from events_fanout import (
    DELAY_COMMAND,
    DELAY_EVERY_SECONDS,
    DELAY_LINES,
    FAST_INTERVAL,
    Stream,
    Target,
    _ExtraOptions,
    close_all,
    line_delays,
    login,
    subscribe_many,
)

CLIENT = BIN_DIR / "sysadm-dispatch"
RUN_SLACK_SECONDS = 30.0


def client_environment(port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SYSADM_DISPATCH_URL=f"ws://{HOST}:{port}", SYSADM_DISPATCH_USER=USERNAME,
               SYSADM_DISPATCH_PASSWORD=PASSWORD)
    env.pop("NO_COLOR", None)
    return env


async def client_delays(port: int, job_id: str) -> list[float]:
    """Run the job through ``sysadm-dispatch run``; arrival minus printed time of each line it prints."""
    process = await asyncio.create_subprocess_exec(
        str(CLIENT), "run", "--id", job_id, DELAY_COMMAND,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=client_environment(port),
    )
    assert process.stdout is not None
    delays = []
    deadline = time.monotonic() + DELAY_LINES * DELAY_EVERY_SECONDS + RUN_SLACK_SECONDS
    while True:
        line = await asyncio.wait_for(process.stdout.readline(), max(0.1, deadline - time.monotonic()))
        if not line:
            break
        delays.append(time.time() - float(line))
    _, err = await process.communicate()
    if process.returncode != 0 or len(delays) != DELAY_LINES:
        raise BenchError(f"the client exited {process.returncode} after {len(delays)} lines: {err.decode()[-300:]}")
    return delays


async def measure_delay(port: int, pid: int, number: int) -> dict[str, float]:
    target = Target("ours", pid, port)
    control, token = await login(target)
    clients = await subscribe_many(target, token, 1)
    try:
        stream = Stream(clients)
        job_id = f"follow{number:03d}"
        ours = await client_delays(port, job_id)
        await asyncio.wait_for(stream.done, RUN_SLACK_SECONDS)
    finally:
        close_all(clients)
        control.close()
    bare = sorted(line_delays(stream.received[0], job_id))
    ours.sort()
    return {
        "cli_p50_ms": percentile(ours, 0.5) * 1e3,
        "cli_p99_ms": percentile(ours, 0.99) * 1e3,
        "ws_p50_ms": percentile(bare, 0.5) * 1e3,
        "ws_p99_ms": percentile(bare, 0.99) * 1e3,
    }


def wall(argv: list[str], env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise BenchError(f"{argv[0]} exited {result.returncode}: {result.stderr.decode()[-300:]}")
    return elapsed


def measure_starts(ws_port: int, rest_port: int, starts: int) -> dict[str, float]:
    env = client_environment(ws_port)
    curl = shutil.which("curl")
    cases = {
        "cli_list_ms": [str(CLIENT), "list"],
        "python_pass_ms": [sys.executable, "-c", "pass"],
        # What the client imports to run ``list``: the floor of its start-up.
        "imports_ms": [sys.executable, "-c", "import twisted.internet.reactor, sysadm_dispatch.cli, "
                       "sysadm_dispatch.client.commands, sysadm_dispatch.client.connection, sysadm_dispatch.auth.users"],
    }
    if curl:
        cases["curl_list_ms"] = [curl, "-sf", "-u", f"{USERNAME}:{PASSWORD}", "-X", "PUT", "-d", '{"action": "list"}',
                                 f"http://{HOST}:{rest_port}/rpc/dispatcher"]
    else:
        log("curl is not installed: no curl figure")
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(starts):
        for name, argv in cases.items():  # interleaved, so background load hits all alike
            times[name].append(wall(argv, env) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = runs[0].keys()
    return {
        "median": {k: round(statistics.median(r[k] for r in runs), 2) for k in keys},
        "runs": {k: [round(r[k], 2) for r in runs] for k in keys},
    }


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="measured runs; medians are reported (default 3)")
    parser.add_argument("--starts", type=int, default=10, help="client starts timed per repeat (default 10)")
    args = parser.parse_args()
    if not 1 <= args.repeat <= 50 or not 1 <= args.starts <= 200:
        parser.error("--repeat must be in [1, 50] and --starts in [1, 200]")
    return args


def main() -> int:
    args = parse_arguments()
    if not CLIENT.exists():
        raise BenchError(f"{CLIENT} not found: install the project into this interpreter's environment")
    stopwatch = Stopwatch()
    with workspace("bench-cli-") as (tmp, children):
        options = _ExtraOptions(children, ["--update-interval", str(FAST_INTERVAL)])
        server = start_our_server(options, tmp)  # type: ignore[arg-type]
        delays, starts = [], []
        for number in range(args.repeat):
            delay = asyncio.run(measure_delay(server.ws_port, server.process.pid, number))
            log(f"delay run {number + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in delay.items()))
            delays.append(delay)
            start = measure_starts(server.ws_port, server.rest_port, args.starts)
            log(f"start-up run {number + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in start.items()))
            starts.append(start)
    delay_summary = summarize(delays)
    delay_summary["ratio"] = {
        "p50": round(statistics.median(r["cli_p50_ms"] / r["ws_p50_ms"] for r in delays), 3),
        "p99": round(statistics.median(r["cli_p99_ms"] / r["ws_p99_ms"] for r in delays), 3),
    }
    start_summary = summarize(starts)
    start_summary["ratio"] = {
        f"cli_over_{name.removesuffix('_ms')}": round(statistics.median(r["cli_list_ms"] / r[name] for r in starts), 2)
        for name in starts[0] if name != "cli_list_ms"
    }
    stopwatch.emit({
        "bench": "cli_follow",
        "repeat": args.repeat,
        "starts": args.starts,
        "update_interval": FAST_INTERVAL,
        "delay_job": {"lines": DELAY_LINES, "every_ms": DELAY_EVERY_SECONDS * 1e3},
        "delay": delay_summary,
        "startup": start_summary,
    })
    return 0


if __name__ == "__main__":
    run_main(main, WebSocketError)
