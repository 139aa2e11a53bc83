"""Benchmark live job events: fan-out throughput and output-to-subscriber delay.

Two measurements, each next to a bare Autobahn server (``bare_broadcast.py``)
driven by the same client code, this process on uvloop when installed:

throughput
    N WebSocket clients subscribe to ``dispatcher``; one ``run`` request
    submits a burst of jobs of ``true`` (three events each: pending, running,
    finished).  Events delivered per second across all subscribers, from the
    submit to the last event received by every subscriber.  The bare server
    broadcasts the same messages, byte for byte, to the same N clients.
    Meanwhile one more connection asks ``rpc/identify`` every 10 ms: its
    slowest answer is how long the server kept every other request waiting.
delay
    A job prints ``time.time()`` every 20 ms for 3 s; each subscriber computes
    arrival time minus printed time for every line of the running updates
    (and of the final log, for the lines no update carried).  Our server runs
    with ``--update-interval 0.05`` and with the default 1.0; the bare server
    runs the same program and sends each piece of output as it comes.

Prints one JSON line; see docs/benchmarks.rst.

    python bench/events_fanout.py [--repeat 3] [--jobs 200] [--subscribers 1,100,1000]
        [--delay-subscribers 1,100] [--batch 16] [--max-seconds 1800] [--no-uvloop] [--bare-only]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    HOST,
    PASSWORD,
    USERNAME,
    BenchError,
    Children,
    Stopwatch,
    cpu_seconds,
    free_port,
    log,
    percentile,
    run_main,
    start_our_server,
    summarize,
    wait_for_port,
    workspace,
)
from _wsclient import WebSocketClient, WebSocketError
from ws_list import event_loop

EVENT_PREFIX = b'{"namespace":"events","name":"dispatcher","id":"","args":{"state":"'
FINISHED_PREFIX = EVENT_PREFIX + b'finished"'
EVENTS_PER_JOB = 3  # pending, running, finished: `true` prints nothing, so no running update
CALL_TIMEOUT_SECONDS = 10.0
# Connections being opened at once: under the listen backlog (50 for Twisted's
# default), so that no SYN is dropped and retried a second later.
CONNECT_CONCURRENCY = 32
QUIET_CPU_FRACTION = 0.05  # a server using less CPU than this is idle
QUIET_BOUND_SECONDS = 15.0
PROBE_REQUEST = '{"namespace":"rpc","name":"identify","id":"probe","args":{}}'
PROBE_EVERY_SECONDS = 0.01
DELAY_LINES = 150
DELAY_EVERY_SECONDS = 0.02
DELAY_CODE = (
    "import time\n"
    f"for _ in range({DELAY_LINES}):\n"
    "    print(repr(time.time()), flush=True)\n"
    f"    time.sleep({DELAY_EVERY_SECONDS})\n"
)
DELAY_ARGV = [sys.executable, "-c", DELAY_CODE]
DELAY_COMMAND = shlex.join(DELAY_ARGV)
DEFAULT_INTERVAL = 1.0
FAST_INTERVAL = 0.05


@dataclass(frozen=True)
class Target:
    name: str  # "ours" or "bare"
    pid: int
    port: int


class _ExtraOptions:
    """Lets ``start_our_server`` pass more sysadm-dispatch options to twistd.

    It spawns the server through ``spawn``; options appended to that command
    line are the sysadm-dispatch sub-command's, as those it puts there.
    """

    def __init__(self, children: Children, options: Sequence[str]) -> None:
        self._children = children
        self._options = list(options)

    def spawn(self, what: str, argv: Sequence[Any], **kwargs: Any) -> Any:
        return self._children.spawn(what, [*argv, *self._options], **kwargs)


def reactor_cpu_seconds(pid: int) -> float:
    """CPU time of a process's main thread, the reactor's, in nanosecond resolution (Linux schedstat)."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def process_cpu_seconds(pid: int) -> float:
    """
    CPU time of all of a process's threads, in nanosecond resolution (Linux
    schedstat): a burst may last only milliseconds, far below the 10 ms
    ticks of ``/proc/<pid>/stat``.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def start_bare_broadcast(children: Children, batch: int) -> Target:
    port = free_port()
    process = children.spawn(
        "bare broadcast server",
        [sys.executable, BENCH_DIR / "bare_broadcast.py", "--port", str(port), "--batch", str(batch)],
    )
    wait_for_port(port, process, "bare broadcast server")
    return Target("bare", process.pid, port)


# Requests.


async def call(
    client: WebSocketClient, namespace: str, name: str, args: Any, request_id: str, timeout: float | None = None
) -> Any:
    """One request on a connection that gets no events; its reply's args."""
    text = json.dumps({"namespace": namespace, "name": name, "id": request_id, "args": args})
    reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    client.on_message = lambda payload: reply.done() or reply.set_result(payload)
    client.on_error = lambda error: reply.done() or reply.set_exception(error)
    client.send(text)
    timeout = timeout or CALL_TIMEOUT_SECONDS  # the reply to a burst may wait behind the burst itself
    try:
        payload = await asyncio.wait_for(reply, timeout)
    except TimeoutError:
        raise BenchError(f"{namespace}/{name}: no reply within {timeout:.0f} s") from None
    reply = json.loads(payload)
    if reply.get("name") != "response" or reply.get("id") != request_id:
        raise BenchError(f"{namespace}/{name}: expected a response, got {payload[:300]!r}")
    return reply.get("args")


async def login(target: Target) -> tuple[WebSocketClient, str]:
    """A control connection logged in with the password, and its token for the others."""
    control = await WebSocketClient.connect(HOST, target.port, CALL_TIMEOUT_SECONDS)
    try:
        reply = await call(control, "rpc", "auth", {"username": USERNAME, "password": PASSWORD}, "login")
    except BaseException:
        control.close()
        raise
    if not (isinstance(reply, list) and reply and isinstance(reply[0], str)):
        control.close()
        raise BenchError(f"unexpected auth reply {reply!r}")
    return control, reply[0]


async def subscribe_many(target: Target, token: str, count: int) -> list[WebSocketClient]:
    """``count`` connections, each authenticated with ``token`` and subscribed to dispatcher events."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> WebSocketClient:
        async with gate:
            client = await WebSocketClient.connect(HOST, target.port, CALL_TIMEOUT_SECONDS)
            try:
                await call(client, "rpc", "auth_token", {"token": token}, "t")
                reply = await call(client, "events", "subscribe", ["dispatcher"], "s")
                if reply != {"subscribe": "dispatcher"}:
                    raise BenchError(f"unexpected subscribe reply {reply!r}")
            except BaseException:
                client.close()
                raise
            return client

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    clients = [r for r in results if isinstance(r, WebSocketClient)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        close_all(clients)
        raise BenchError(f"{len(errors)} of {count} subscribers failed to connect, first: {errors[0]!r}")
    return clients


def close_all(clients: Sequence[WebSocketClient]) -> None:
    for client in clients:
        client.close()


async def quiet(target: Target) -> None:
    """Wait (bounded) until the server is idle, e.g. done closing the previous run's connections."""
    deadline = time.monotonic() + QUIET_BOUND_SECONDS
    window = 0.25
    while time.monotonic() < deadline:
        before = cpu_seconds(target.pid)
        await asyncio.sleep(window)
        if cpu_seconds(target.pid) - before <= QUIET_CPU_FRACTION * window:
            return
    log(f"{target.name} server still busy after {QUIET_BOUND_SECONDS:.0f} s; measuring anyway")


# Throughput.


class Burst:
    """Count each subscriber's events until every one has ``expected``; keep the first one's."""

    def __init__(self, clients: Sequence[WebSocketClient], expected: int) -> None:
        self.expected = expected
        self.counts = [0] * len(clients)
        self.sizes = [0] * len(clients)
        self.kept: list[bytes] = []
        self.waiting = len(clients)
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        for index, client in enumerate(clients):
            client.on_message = self._receiver(index)
            client.on_error = self._fail

    def _receiver(self, index: int) -> Callable[[bytes], None]:
        counts, sizes, expected, kept = self.counts, self.sizes, self.expected, self.kept

        def receive(payload: bytes) -> None:
            if not payload.startswith(EVENT_PREFIX):
                self._fail(BenchError(f"subscriber {index}: not a dispatcher event: {payload[:300]!r}"))
                return
            if index == 0:
                kept.append(payload)
            sizes[index] += len(payload)
            counts[index] += 1
            if counts[index] == expected:
                self.waiting -= 1
                if not self.waiting and not self.done.done():
                    self.done.set_result(time.perf_counter())
            elif counts[index] > expected:
                self._fail(BenchError(f"subscriber {index}: more than {expected} events"))

        return receive

    def _fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class Probe:
    """A connection that asks ``rpc/identify`` every ``PROBE_EVERY_SECONDS`` while a burst runs.

    Its slowest answer is how long the server kept everyone else waiting: a
    reactor busy sending events answers nothing else meanwhile.
    """

    def __init__(self, client: WebSocketClient) -> None:
        self.client = client
        self.slowest = 0.0
        self.answers = 0

    async def run(self, until: asyncio.Future[Any], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        while not until.done():
            reply: asyncio.Future[bytes] = loop.create_future()
            self.client.on_message = lambda payload, reply=reply: reply.done() or reply.set_result(payload)
            self.client.on_error = lambda error, reply=reply: reply.done() or reply.set_exception(error)
            sent = time.perf_counter()
            self.client.send(PROBE_REQUEST)
            try:
                payload = await asyncio.wait_for(reply, timeout)
            except TimeoutError:
                raise BenchError(f"no answer to rpc/identify within {timeout:.0f} s") from None
            self.slowest = max(self.slowest, time.perf_counter() - sent)
            self.answers += 1
            if b'"name":"response"' not in payload:
                raise BenchError(f"unexpected identify reply {payload[:300]!r}")
            await asyncio.sleep(PROBE_EVERY_SECONDS)


def check_burst(burst: Burst, job_ids: Sequence[str]) -> None:
    """Every job's pending, running, finished in order, successful; the same bytes for everyone."""
    states: dict[str, list[str]] = collections.defaultdict(list)
    for payload in burst.kept:
        args = json.loads(payload)["args"]
        states[args["process_id"]].append(args["state"])
        if args["state"] == "finished" and args.get("success") not in ("true", None):
            raise BenchError(f"job {args['process_id']} failed: {payload[:400]!r}")
    wrong = {job: seen for job, seen in states.items() if seen != ["pending", "running", "finished"]}
    if wrong or set(states) != set(job_ids):
        raise BenchError(f"unexpected event sequence, e.g. {list(wrong.items())[:3]}, {len(states)} jobs seen")
    if len(set(burst.sizes)) != 1:
        raise BenchError(f"subscribers received different byte counts: {sorted(set(burst.sizes))[:5]}")


async def measure_burst(
    target: Target, subscribers: int, jobs: int, run_number: int, messages: Sequence[bytes]
) -> tuple[dict[str, float], list[bytes]]:
    """One burst; returns the sample and the messages subscriber 0 received."""
    control, token = await login(target)
    clients: list[WebSocketClient] = []
    try:
        probe = Probe(await WebSocketClient.connect(HOST, target.port, CALL_TIMEOUT_SECONDS))
        clients.append(probe.client)
        await call(probe.client, "rpc", "auth_token", {"token": token}, "t")  # else the auth timeout applies
        started = time.perf_counter()
        clients += await subscribe_many(target, token, subscribers)
        connect_s = time.perf_counter() - started
        job_ids = [f"burst{run_number:04d}-{i:05d}" for i in range(jobs)]
        if target.name == "bare":
            await call(control, "bench", "load", [m.decode() for m in messages], "load")
            expected = len(messages)
        else:
            expected = EVENTS_PER_JOB * jobs
        await quiet(target)
        burst = Burst(clients[1:], expected)
        timeout = 60 + 0.2 * expected * subscribers / 1000
        server_cpu = process_cpu_seconds(target.pid)
        reactor_cpu = reactor_cpu_seconds(target.pid)
        client_cpu = time.process_time()
        started = time.perf_counter()
        if target.name == "bare":
            reply = asyncio.ensure_future(call(control, "bench", "broadcast", None, "go", timeout))
        else:
            run = {"action": "run", "jobs": [{"id": job_id, "commands": ["true"]} for job_id in job_ids]}
            reply = asyncio.ensure_future(call(control, "rpc", "dispatcher", run, "run", timeout))
        probing = asyncio.ensure_future(probe.run(burst.done, timeout))
        try:
            finished = await asyncio.wait_for(burst.done, timeout)
        except TimeoutError:
            waiting = sum(1 for count in burst.counts if count < expected)
            raise BenchError(f"{waiting} of {subscribers} subscribers still waiting after {timeout:.0f} s") from None
        wall = finished - started
        client_cpu = time.process_time() - client_cpu
        server_cpu = process_cpu_seconds(target.pid) - server_cpu
        reactor_cpu = reactor_cpu_seconds(target.pid) - reactor_cpu
        answer = await reply
        await probing
        if target.name == "ours":
            if not isinstance(answer, dict) or sorted(answer.get("started", [])) != job_ids:
                raise BenchError(f"unexpected run reply {str(answer)[:300]}")
            check_burst(burst, job_ids)
        elif len(set(burst.sizes)) != 1:
            raise BenchError("subscribers of the bare server received different byte counts")
    finally:
        close_all(clients)
        control.close()
    sample = {
        "events_per_s": expected * subscribers / wall,
        "burst_s": wall,
        "reactor_us_per_event": reactor_cpu / (expected * subscribers) * 1e6,
        "stall_max_ms": probe.slowest * 1e3,
        "connect_s": connect_s,
        "server_cpu": server_cpu / wall,
        "client_cpu": client_cpu / wall,
    }
    return sample, burst.kept


# Delay from output to subscriber.


class Stream:
    """Each subscriber's messages with their arrival times, until the finished event."""

    def __init__(self, clients: Sequence[WebSocketClient]) -> None:
        self.received: list[list[tuple[float, bytes]]] = [[] for _ in clients]
        self.waiting = len(clients)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for index, client in enumerate(clients):
            client.on_message = self._receiver(self.received[index])
            client.on_error = self._fail

    def _receiver(self, received: list[tuple[float, bytes]]) -> Callable[[bytes], None]:
        def receive(payload: bytes) -> None:
            received.append((time.time(), payload))
            if payload.startswith(FINISHED_PREFIX):
                self.waiting -= 1
                if not self.waiting and not self.done.done():
                    self.done.set_result(None)

        return receive

    def _fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


def line_delays(received: Sequence[tuple[float, bytes]], job_id: str) -> list[float]:
    """Arrival minus printed time of every output line, from running chunks and the final log."""
    delays: list[float] = []
    streamed = ""
    carry = ""  # a line split across updates completes in the later one, which is when it arrived
    for arrived, payload in received:
        args = json.loads(payload)["args"]
        if args.get("process_id") != job_id:
            continue
        details = args["process_details"]
        text = details.get(DELAY_COMMAND, "")
        if args["state"] == "finished":
            if not text.startswith(streamed):
                raise BenchError("the running chunks are not the start of the final log")
            text = text[len(streamed) :]
        elif args["state"] != "running":
            continue
        streamed += text
        *complete, carry = (carry + text).split("\n")
        delays.extend(arrived - float(line) for line in complete)
    if len(delays) != DELAY_LINES:
        raise BenchError(f"expected {DELAY_LINES} output lines, got {len(delays)}")
    return delays


async def measure_delay(target: Target, subscribers: int, run_number: int) -> dict[str, float]:
    control, token = await login(target)
    clients: list[WebSocketClient] = []
    try:
        clients = await subscribe_many(target, token, subscribers)
        await quiet(target)
        stream = Stream(clients)
        job_id = f"delay{run_number:04d}"
        if target.name == "bare":
            await call(control, "bench", "stream", {"id": job_id, "argv": DELAY_ARGV, "command": DELAY_COMMAND}, "go")
        else:
            run = {"action": "run", "jobs": [{"id": job_id, "commands": [DELAY_COMMAND]}]}
            await call(control, "rpc", "dispatcher", run, "run")
        try:
            await asyncio.wait_for(stream.done, timeout=DELAY_LINES * DELAY_EVERY_SECONDS + 30)
        except TimeoutError:
            raise BenchError(f"{stream.waiting} subscribers did not get the finished event in time") from None
    finally:
        close_all(clients)
        control.close()
    delays = sorted(d for received in stream.received for d in line_delays(received, job_id))
    return {
        "p50_ms": percentile(delays, 0.50) * 1e3,
        "p99_ms": percentile(delays, 0.99) * 1e3,
        "max_ms": delays[-1] * 1e3,
    }


# The whole run.


def synthetic_events(jobs: int) -> list[bytes]:
    """With --bare-only: events shaped and sized like ours for jobs of ``true``."""
    out = []
    for state in ("pending", "running", "finished"):
        for i in range(jobs):
            job_id = f"burst0000-{i:05d}"
            details: dict[str, Any] = {"process_id": job_id, "state": state, "cmd_list": ["true"]}
            if state != "pending":
                details["time_started"] = "2025-01-01T00:00:00.000000+00:00"
            if state == "running":
                details["current_cmd"] = "true"
            if state == "finished":
                details.update(
                    {"time_finished": "2025-01-01T00:00:00.001000+00:00", "true": "", "return_codes/true": "0"}
                )
            args = {
                "state": state,
                "process_id": job_id,
                "process_details": details,
                "queue": "no_queue",
                "success": "true" if state == "finished" else "false",
                "killed": False,
                "timed_out": False,
                "interrupted": False,
                "signal": None,
                "escalated": False,
            }
            message = {"namespace": "events", "name": "dispatcher", "id": "", "args": args}
            out.append(json.dumps(message, separators=(",", ":")).encode())
    return out


def ratio(
    ours: Sequence[dict[str, float]], bare: Sequence[dict[str, float]], keys: Sequence[str]
) -> dict[str, float | None]:
    """Median over the repeats of ours / bare measured in the same repeat.

    None where the bare value was 0 in every repeat.
    """
    out: dict[str, float | None] = {}
    for key in keys:
        pairs = [o[key] / b[key] for o, b in zip(ours, bare, strict=True) if b[key] > 0]
        out[key] = round(statistics.median(pairs), 4) if pairs else None
    return out


async def bench(args: argparse.Namespace, targets: dict[str, Target]) -> dict[str, Any]:
    bare = targets["bare"]
    throughput: dict[int, dict[str, list[dict[str, float]]]] = {
        n: collections.defaultdict(list) for n in args.subscribers
    }
    delay: dict[int, dict[str, list[dict[str, float]]]] = {
        n: collections.defaultdict(list) for n in args.delay_subscribers
    }
    run_number = 0
    # Warm up both, and take the messages the bare server will broadcast from ours.
    messages = synthetic_events(args.jobs)
    if "ours" in targets:
        _, messages = await measure_burst(targets["ours"], 1, args.jobs, run_number, ())
        run_number += 1
    await measure_burst(bare, 1, args.jobs, run_number, messages)
    burst_targets = [t for t in (targets.get("ours"), bare) if t is not None]
    delay_targets = [name for name in ("ours_interval_0.05", "ours_interval_1", "bare") if name in targets]
    for repeat in range(args.repeat):
        for n in args.subscribers:
            order = burst_targets if repeat % 2 == 0 else burst_targets[::-1]
            for target in order:
                run_number += 1
                sample, _ = await measure_burst(target, n, args.jobs, run_number, messages)
                throughput[n][target.name].append(sample)
                log(
                    f"repeat {repeat + 1} {target.name} {n} subscribers: {sample['events_per_s']:.0f} events/s "
                    f"(burst {sample['burst_s']:.2f} s, {sample['reactor_us_per_event']:.1f} reactor us/event, "
                    f"longest stall {sample['stall_max_ms']:.0f} ms, connect {sample['connect_s']:.2f} s, "
                    f"server cpu {sample['server_cpu']:.2f}, client cpu {sample['client_cpu']:.2f})"
                )
        for n in args.delay_subscribers:
            shift = repeat % len(delay_targets)
            for name in delay_targets[shift:] + delay_targets[:shift]:
                run_number += 1
                sample = await measure_delay(targets[name], n, run_number)
                delay[n][name].append(sample)
                log(
                    f"repeat {repeat + 1} {name} {n} subscribers: delay p50 {sample['p50_ms']:.1f} ms, "
                    f"p99 {sample['p99_ms']:.1f} ms, max {sample['max_ms']:.1f} ms"
                )
    result: dict[str, Any] = {
        "throughput": {},
        "delay": {},
        "event_bytes": round(sum(map(len, messages)) / len(messages), 1),
    }
    for n, runs in throughput.items():
        entry: dict[str, Any] = {name: summarize(samples) for name, samples in runs.items()}
        if "ours" in runs:
            entry["ratio"] = ratio(runs["ours"], runs["bare"], ["events_per_s", "reactor_us_per_event", "stall_max_ms"])
        result["throughput"][str(n)] = entry
    for n, runs in delay.items():
        entry = {name: summarize(samples) for name, samples in runs.items()}
        for name in runs:
            if name.startswith("ours"):
                entry[f"ratio_{name[len('ours_') :]}"] = ratio(runs[name], runs["bare"], ["p50_ms", "p99_ms"])
        result["delay"][str(n)] = entry
    return result


def counts(text: str, name: str, bound: int) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: a comma-separated list of whole numbers") from None
    if not values or not all(1 <= v <= bound for v in values):
        raise argparse.ArgumentTypeError(f"{name}: each in [1, {bound}]")
    return values


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="measured runs per case; medians are reported (default 3)"
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs of `true` in one burst (default 200)")
    parser.add_argument("--subscribers", default="1,100,1000", help="throughput cases (default 1,100,1000)")
    parser.add_argument("--delay-subscribers", default="1,100", help="delay cases (default 1,100)")
    parser.add_argument("--batch", type=int, default=16, help="bare server: messages per reactor turn (default 16)")
    parser.add_argument("--max-seconds", type=int, default=1800, help="give up after this long (default 1800)")
    parser.add_argument("--no-uvloop", action="store_true", help="drive the clients with asyncio's own loop")
    parser.add_argument("--bare-only", action="store_true", help="measure only the bare server")
    args = parser.parse_args()
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be in [1, 50]")
    if not 1 <= args.jobs <= 1000:
        parser.error("--jobs must be in [1, 1000] (the server's default --max-jobs-per-run)")
    if not 1 <= args.batch <= 100000:
        parser.error("--batch must be in [1, 100000]")
    if not 10 <= args.max_seconds <= 86400:
        parser.error("--max-seconds must be in [10, 86400]")
    try:
        # One connection more than the subscribers: the control connection.
        args.subscribers = counts(args.subscribers, "--subscribers", 1999)
        args.delay_subscribers = counts(args.delay_subscribers, "--delay-subscribers", 1999)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    return args


def main() -> int:
    args = parse_arguments()

    def out_of_time(signum: int, frame: object) -> None:
        log(f"error: still running after --max-seconds {args.max_seconds}")
        raise SystemExit(3)

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(args.max_seconds)
    loop_name, run = event_loop(allow_uvloop=not args.no_uvloop)
    stopwatch = Stopwatch()
    with workspace("bench-events-") as (tmp, children):
        targets: dict[str, Target] = {}
        if not args.bare_only:
            for name, interval in (("ours", DEFAULT_INTERVAL), ("ours_interval_0.05", FAST_INTERVAL)):
                workdir = tmp / name
                workdir.mkdir()
                options = _ExtraOptions(children, ["--update-interval", str(interval)])
                server = start_our_server(options, workdir)  # type: ignore[arg-type]
                targets[name] = Target("ours", server.process.pid, server.ws_port)
            targets["ours_interval_1"] = targets["ours"]
        targets["bare"] = start_bare_broadcast(children, args.batch)
        results = run(bench(args, targets))
    signal.alarm(0)
    stopwatch.emit(
        {
            "bench": "events_fanout",
            "repeat": args.repeat,
            "jobs": args.jobs,
            "events_per_burst": EVENTS_PER_JOB * args.jobs,
            "bare_batch": args.batch,
            "delay_job": {"lines": DELAY_LINES, "every_ms": DELAY_EVERY_SECONDS * 1e3},
            "client_loop": loop_name,
            **results,
        }
    )
    return 0


if __name__ == "__main__":
    run_main(main, WebSocketError)
