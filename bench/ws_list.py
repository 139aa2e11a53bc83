"""Benchmark ``rpc/dispatcher {"action": "list"}`` over one WebSocket connection.

Drives sysadm-dispatch and a bare Autobahn server (same reactor, same reply
bytes, no work) with the same client: this process, the minimal asyncio
client in ``_wsclient.py``, on uvloop when it is installed.  Two modes:
lockstep (send, wait for the reply, repeat) and pipelined (a fixed number of
requests in flight).  Prints one JSON line with req/s, p50/p99 latency and
ours/bare ratios.  See docs/benchmarks.rst.

    python bench/ws_list.py [--seconds 5] [--repeat 3] [--warmup 1] [--depth 64] [--no-uvloop] [--bare-only]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from _common import (
    HOST,
    PASSWORD,
    USERNAME,
    BenchError,
    Stopwatch,
    Target,
    base_arguments,
    compare,
    cpu_seconds,
    log,
    parse_base_arguments,
    percentile,
    run_main,
    start_bare_server,
    start_our_server,
    workspace,
)
from _wsclient import WebSocketClient, WebSocketError

REQUEST = '{"namespace":"rpc","name":"dispatcher","id":"%d","args":{"action":"list"}}'
AUTH = json.dumps(
    {
        "namespace": "rpc",
        "name": "auth",
        "id": "a",
        "args": {"username": USERNAME, "password": PASSWORD},
    }
)
PROBE_ID = "probe-0"
# The reply as the protocol documents it; the bare server's template only with --bare-only.
DEFAULT_PREFIX = '{"namespace":"rpc","name":"response","id":'
DEFAULT_SUFFIX = ',"args":{"jobs":{}}}'
MODES = ("lockstep", "pipelined")
RUN_SLACK_SECONDS = 30.0
CALL_TIMEOUT_SECONDS = 10.0

T = TypeVar("T")


def check_reply(payload: bytes, request_id: str) -> dict[str, Any]:
    try:
        reply = json.loads(payload)
    except ValueError:
        raise BenchError(f"a reply that is not JSON: {payload[:300]!r}") from None
    if not isinstance(reply, dict) or reply.get("name") != "response" or reply.get("id") != request_id:
        raise BenchError(f"expected a response to {request_id!r}, got {payload[:300]!r}")
    return reply


async def exchange(client: WebSocketClient, text: str) -> bytes:
    """Send one request and wait for the next message."""
    reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def settle(payload: bytes) -> None:
        if not reply.done():
            reply.set_result(payload)

    def fail(error: BaseException) -> None:
        if not reply.done():
            reply.set_exception(error)

    client.on_message, client.on_error = settle, fail
    client.send(text)
    try:
        return await asyncio.wait_for(reply, CALL_TIMEOUT_SECONDS)
    except TimeoutError:
        raise BenchError(f"no reply within {CALL_TIMEOUT_SECONDS:.0f} s to {text[:100]}") from None


async def open_session(port: int) -> WebSocketClient:
    """Connect and log in."""
    client = await WebSocketClient.connect(HOST, port, CALL_TIMEOUT_SECONDS)
    check_reply(await exchange(client, AUTH), "a")
    return client


async def probe(port: int) -> tuple[str, str]:
    """Ask our server once; return the reply text before and after the JSON-encoded id."""
    client = await open_session(port)
    try:
        payload = await exchange(client, REQUEST.replace('"%d"', json.dumps(PROBE_ID)))
    finally:
        client.close()
    reply = check_reply(payload, PROBE_ID)
    if not isinstance(reply.get("args"), dict) or "jobs" not in reply["args"]:
        raise BenchError(f"unexpected list reply: {payload[:300]!r}")
    parts = payload.decode().split(json.dumps(PROBE_ID))
    if len(parts) != 2:
        raise BenchError(f"cannot find the id once in the reply: {payload[:300]!r}")
    return parts[0], parts[1]


class Run:
    """Keep ``depth`` requests in flight until ``deadline``; ``finished`` gives the latencies (ns).

    Depth 1 is lockstep.  Replies come in request order (PROTOCOL.md section 2), so
    each reply answers the oldest request in flight, and it sends the next request.
    """

    def __init__(self, client: WebSocketClient, deadline: float, depth: int) -> None:
        self._client = client
        self._deadline = deadline
        self._number = 0
        self._in_flight: collections.deque[tuple[str, int]] = collections.deque()
        self.latencies: list[int] = []
        self.finished: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        client.on_message, client.on_error = self._on_reply, self._on_error
        for _ in range(depth):
            self._send_next()

    def _send_next(self) -> None:
        self._number += 1
        self._in_flight.append((str(self._number), time.perf_counter_ns()))
        self._client.send(REQUEST % self._number)

    def _on_reply(self, payload: bytes) -> None:
        try:
            if not self._in_flight:
                raise BenchError(f"a message with no request in flight: {payload[:300]!r}")
            request_id, sent = self._in_flight.popleft()
            self.latencies.append(time.perf_counter_ns() - sent)
            check_reply(payload, request_id)
        except (BenchError, WebSocketError) as error:
            self._on_error(error)
            self._client.close()
            return
        if time.perf_counter() < self._deadline:
            self._send_next()
        elif not self._in_flight and not self.finished.done():
            self.finished.set_result(self.latencies)

    def _on_error(self, error: BaseException) -> None:
        if not self.finished.done():
            self.finished.set_exception(error)


async def measure(target: Target, seconds: float, depth: int) -> dict[str, float]:
    """One run on a fresh, logged-in connection; login happens before the clock starts."""
    client = await open_session(target.port)
    try:
        server_cpu = cpu_seconds(target.pid)
        client_cpu = time.process_time()
        started = time.perf_counter()
        run = Run(client, started + seconds, depth)
        try:
            latencies = await asyncio.wait_for(run.finished, seconds + RUN_SLACK_SECONDS)
        except TimeoutError:
            raise BenchError(
                f"{target.name}: the run did not finish within {seconds + RUN_SLACK_SECONDS:.0f} s"
            ) from None
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_cpu = cpu_seconds(target.pid) - server_cpu
    finally:
        client.close()
    latencies.sort()
    return {
        "rps": len(latencies) / wall,
        "p50_ms": percentile(latencies, 0.50) / 1e6,
        "p99_ms": percentile(latencies, 0.99) / 1e6,
        "server_cpu": server_cpu / wall,
        "server_us_per_req": server_cpu / len(latencies) * 1e6,
        "client_cpu": client_cpu / wall,
    }


async def bench(args: argparse.Namespace, targets: list[Target]) -> dict[str, dict[str, list[dict[str, float]]]]:
    depths = {"lockstep": 1, "pipelined": args.depth}
    for target in targets if args.warmup else ():
        log(f"warming up {target.name}")
        await measure(target, args.warmup, args.depth)
    samples: dict[str, dict[str, list[dict[str, float]]]] = {m: {t.name: [] for t in targets} for m in MODES}
    for repeat in range(args.repeat):
        # Alternate who goes first so slow drift on a shared machine hits both alike.
        order = targets if repeat % 2 == 0 else targets[::-1]
        for name in MODES:
            for target in order:
                sample = await measure(target, args.seconds, depths[name])
                log(
                    f"{target.name} {name}: {sample['rps']:.0f} req/s, p50 {sample['p50_ms']:.2f} ms, "
                    f"p99 {sample['p99_ms']:.2f} ms, server cpu {sample['server_cpu']:.2f}, "
                    f"client cpu {sample['client_cpu']:.2f}"
                )
                samples[name][target.name].append(sample)
    return samples


def event_loop(allow_uvloop: bool) -> tuple[str, Callable[[Coroutine[Any, Any, T]], T]]:
    """uvloop's runner when allowed and installed (it halves the client's CPU), else asyncio's."""
    if allow_uvloop:
        try:
            import uvloop
        except ImportError:
            log("uvloop is not installed: the client runs on asyncio's own loop")
        else:
            return "uvloop", uvloop.run
    return "asyncio", asyncio.run


def main() -> int:
    parser = base_arguments(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--depth",
        type=int,
        default=64,
        help="requests in flight when pipelined (default 64)",
    )
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        help="drive the client with asyncio's own loop even if uvloop is installed",
    )
    args = parse_base_arguments(parser)
    if not 1 <= args.depth <= 10000:
        parser.error("--depth must be in [1, 10000]")
    loop_name, run = event_loop(allow_uvloop=not args.no_uvloop)
    stopwatch = Stopwatch()
    with workspace("bench-ws-") as (tmp, children):
        targets = []
        prefix, suffix = DEFAULT_PREFIX, DEFAULT_SUFFIX
        if not args.bare_only:
            ours = start_our_server(children, tmp)
            prefix, suffix = run(probe(ours.ws_port))
            targets.append(Target("ours", ours.process.pid, ours.ws_port))
        bare_process, bare_port = start_bare_server(children, "autobahn", ["--prefix", prefix, "--suffix", suffix])
        if run(probe(bare_port)) != (prefix, suffix):
            raise BenchError("the bare server's reply differs from ours")
        targets.append(Target("bare", bare_process.pid, bare_port))
        samples = run(bench(args, targets))
    stopwatch.emit(
        {
            "bench": "ws_list",
            "seconds": args.seconds,
            "repeat": args.repeat,
            "depth": args.depth,
            "client_loop": loop_name,
            "reply_bytes": len(f"{prefix}{json.dumps('1')}{suffix}".encode()),
            "results": {mode: compare(runs) for mode, runs in samples.items()},
        }
    )
    return 0


if __name__ == "__main__":
    run_main(main, WebSocketError)
