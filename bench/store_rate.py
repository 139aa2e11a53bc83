"""Benchmark the job store: ``run`` with durable acceptance, and history reads.

1. ``run`` requests per second over WebSocket, one request in flight per
   connection, 1 and 16 connections, against the same embedded server with
   its job store in a file (each reply waits for its commit), in memory, and
   with no store.  The machine's raw limit is measured in the same run: how
   many single-row SQLite commits per second its disk takes in the same
   directory (WAL, synchronous=FULL), which is what an unbatched durable
   ``run`` would be held to.
2. History with 100,000 finished jobs stored: ``read_logs`` (the default
   period, and 30 days with limit 1000) and the ``job`` action over
   WebSocket, next to the bare SQL of the same queries and to a ``list``
   round trip on the same connection; and the startup check (open and
   integrity check) of that database.

Prints one JSON line; see docs/benchmarks.rst.

    python bench/store_rate.py [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    BIN_DIR,
    HOST,
    PASSWORD,
    USERNAME,
    BenchError,
    base_arguments,
    children_stopped_on_exit,
    emit,
    free_port,
    log,
    machine,
    parse_base_arguments,
    percentile,
    summarize,
    wait_for_port,
)
from _wsclient import WebSocketClient

MODES = ("file", "memory", "none")
CONNECTIONS = (1, 16)
HISTORY_JOBS = 100_000
QUERIES = 50
CALL_TIMEOUT = 30.0
AUTH = json.dumps({"namespace": "rpc", "name": "auth", "id": "a", "args": {"username": USERNAME, "password": PASSWORD}})


class Connection:
    """One logged-in WebSocket connection making one call at a time."""

    def __init__(self, client: WebSocketClient) -> None:
        self.client = client
        self._reply: asyncio.Future[bytes] | None = None
        client.on_message = self._message
        client.on_error = self._error

    @classmethod
    async def open(cls, port: int) -> Connection:
        connection = cls(await WebSocketClient.connect(HOST, port, CALL_TIMEOUT))
        reply = json.loads(await connection.call(AUTH))
        if reply.get("name") != "response":
            raise BenchError(f"login failed: {reply}")
        return connection

    def _message(self, payload: bytes) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(payload)

    def _error(self, error: BaseException) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(error)

    async def call(self, text: str) -> bytes:
        self._reply = asyncio.get_running_loop().create_future()
        self.client.send(text)
        return await asyncio.wait_for(self._reply, CALL_TIMEOUT)


def run_request(job_id: str) -> str:
    return json.dumps({"namespace": "rpc", "name": "dispatcher", "id": job_id, "args": {
        "action": "run", "jobs": [{"id": job_id, "commands": "true", "queue": "hold"}]}})


async def run_load(port: int, connections: int, seconds: float, tag: str) -> dict[str, float]:
    opened = [await Connection.open(port) for _ in range(connections)]
    latencies: list[int] = []
    deadline = time.perf_counter() + seconds

    async def loop(n: int, connection: Connection) -> None:
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            job_id = f"{tag}-{n}-{i}"
            sent = time.perf_counter_ns()
            reply = json.loads(await connection.call(run_request(job_id)))
            latencies.append(time.perf_counter_ns() - sent)
            if reply.get("args") != {"started": [job_id]}:
                raise BenchError(f"run refused: {reply}")

    started = time.perf_counter()
    await asyncio.gather(*(loop(n, c) for n, c in enumerate(opened)))
    wall = time.perf_counter() - started
    for connection in opened:
        connection.client.close()
    latencies.sort()
    return {"rps": len(latencies) / wall, "p50_ms": percentile(latencies, 0.5) / 1e6,
            "p99_ms": percentile(latencies, 0.99) / 1e6}


def raw_commit_rate(folder: Path, seconds: float) -> float:
    """Single-row commits per second SQLite gets on this disk (WAL, synchronous=FULL)."""
    path = folder / "raw.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, job_id TEXT, spec TEXT, time REAL)")
    spec = json.dumps({"id": "x", "commands": ["true"], "queue": "hold"})
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (job_id, spec, time) VALUES (?, ?, ?)", (f"j{n}", spec, time.time()))
        conn.execute("COMMIT")
        n += 1
    rate = n / (time.perf_counter() - started)
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return rate


def start_server(children: Any, mode: str, state: Path, users: Path) -> int:
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR.parent), environment.get("PYTHONPATH")]))
    process = children.spawn(f"server ({mode} store)", [sys.executable, BENCH_DIR / "_store_server.py", mode,
                                                        str(port), state, users], environment=environment)
    wait_for_port(port, process, f"server ({mode} store)")
    return port


def make_users(folder: Path) -> Path:
    users = folder / "users"
    subprocess.run([str(BIN_DIR / "sysadm-dispatch"), "user", "add", USERNAME, "--role", "full", "--users",
                    str(users)], input=f"{PASSWORD}\n".encode(), stdout=sys.stderr, stderr=sys.stderr, check=True,
                   timeout=60)
    return users


def fill_history(path: Path, jobs: int) -> float:
    """A store holding ``jobs`` finished jobs over the last 30 days; returns the newest finish time."""
    from sysadm_dispatch.store.migrations import open_database

    conn, _ = open_database(str(path), time.time())
    now = time.time()
    rng = random.Random(5)
    rows = []
    for n in range(jobs):
        t = now - 30 * 86400 * (1 - n / jobs)
        job_id = f"pkg_queue-{{{rng.getrandbits(64):016x}}}"
        command = f"pkg install -y package{n % 500}"
        record = {"state": "finished", "process_id": job_id, "queue": "pkg_queue", "success": "true",
                  "killed": False, "timed_out": False, "interrupted": False, "signal": None,
                  "process_details": {"process_id": job_id, "state": "finished", "cmd_list": [command],
                                      "time_started": "2024-01-01T00:00:00+00:00",
                                      "time_finished": "2024-01-01T00:00:01+00:00",
                                      command: "Updating repository catalogue...\n" * 8,
                                      f"return_codes/{command}": "0"}}
        rows.append((job_id, t, json.dumps(record)))
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO history (job_id, time_finished, record) VALUES (?, ?, ?)", rows)
    conn.execute("COMMIT")
    conn.close()
    return now


def timed(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {"median_ms": round(statistics.median(samples) * 1000, 3),
            "p99_ms": round(percentile(samples, 0.99) * 1000, 3)}


def bare_queries(path: Path, last_id: str) -> dict[str, dict[str, float]]:
    """The same queries in plain sqlite3, JSON decoding included: the floor."""
    conn = sqlite3.connect(path)
    now = time.time()
    queries = {
        "read_logs_12h": ("SELECT time_finished, record FROM history WHERE time_finished BETWEEN ? AND ? "
                          "ORDER BY time_finished DESC, seq DESC LIMIT 101", (now - 43200, now)),
        "read_logs_30d_1000": ("SELECT time_finished, record FROM history WHERE time_finished BETWEEN ? AND ? "
                               "ORDER BY time_finished DESC, seq DESC LIMIT 1001", (now - 31 * 86400, now)),
        "job": ("SELECT record FROM history WHERE job_id = ? ORDER BY seq DESC LIMIT 1", (last_id,)),
    }
    out = {}
    for name, (sql, params) in queries.items():
        samples = []
        for _ in range(QUERIES):
            started = time.perf_counter()
            for row in conn.execute(sql, params).fetchall():
                json.loads(row[-1])
            samples.append(time.perf_counter() - started)
        out[name] = timed(samples)
    conn.close()
    return out


async def history_queries(port: int, last_id: str) -> dict[str, dict[str, Any]]:
    connection = await Connection.open(port)
    requests = {
        # The same round trip doing next to nothing: what the store's share is measured against.
        "list_round_trip": {"action": "list"},
        "read_logs_12h": {"action": "read_logs", "logs": "dispatcher"},
        "read_logs_30d_1000": {"action": "read_logs", "logs": "dispatcher", "time_format": "relative_day",
                               "start_time": "-31", "limit": 1000},
        "job": {"action": "job", "job_id": last_id},
    }
    out: dict[str, dict[str, Any]] = {}
    for name, args in requests.items():
        call = "dispatcher" if name == "list_round_trip" else "logs"
        text = json.dumps({"namespace": "rpc", "name": call, "id": name, "args": args})
        samples = []
        size = 0
        for _ in range(QUERIES):
            started = time.perf_counter()
            payload = await connection.call(text)
            samples.append(time.perf_counter() - started)
            size = len(payload)
            reply = json.loads(payload)
            if reply.get("name") != "response":
                raise BenchError(f"{name} failed: {reply}")
        out[name] = {**timed(samples), "reply_bytes": size}
    connection.client.close()
    return out


def main() -> int:
    parser = base_arguments(__doc__.split("\n\n")[0])
    args = parse_base_arguments(parser)
    host = machine()
    result: dict[str, Any] = {"bench": "store_rate", "seconds": args.seconds, "repeat": args.repeat}
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=os.environ.get("BENCH_DIR")) as tmp:
        folder = Path(tmp)
        users = make_users(folder)
        raw = [raw_commit_rate(folder, min(args.seconds, 3)) for _ in range(args.repeat)]
        log(f"raw single-row commits: {[round(r) for r in raw]} per second")
        samples: dict[str, dict[str, list[dict[str, float]]]] = {
            f"{c}conn": {mode: [] for mode in MODES} for c in CONNECTIONS}
        for repeat in range(args.repeat):
            for connections in CONNECTIONS:
                order = MODES if repeat % 2 == 0 else MODES[::-1]
                for mode in order:
                    # A fresh server each time: every run starts from an empty queue and store.
                    with children_stopped_on_exit() as children:
                        port = start_server(children, mode, folder / f"{mode}-{repeat}-{connections}", users)
                        if args.warmup:
                            asyncio.run(run_load(port, connections, args.warmup, "warm"))
                        sample = asyncio.run(run_load(port, connections, args.seconds, "run"))
                    log(f"{mode} store, {connections} connections: {sample['rps']:.0f} run/s, "
                        f"p50 {sample['p50_ms']:.2f} ms, p99 {sample['p99_ms']:.2f} ms")
                    samples[f"{connections}conn"][mode].append(sample)
        raw_median = statistics.median(raw)
        result["raw_commits_per_s"] = round(raw_median, 1)
        result["run"] = {}
        for key, by_mode in samples.items():
            entry: dict[str, Any] = {mode: summarize(runs) for mode, runs in by_mode.items()}
            rps = {mode: statistics.median(s["rps"] for s in runs) for mode, runs in by_mode.items()}
            entry["ratio"] = {"file_vs_memory": round(rps["file"] / rps["memory"], 3),
                              "memory_vs_none": round(rps["memory"] / rps["none"], 3),
                              "file_vs_raw_commits": round(rps["file"] / raw_median, 3)}
            result["run"][key] = entry

        log(f"storing {HISTORY_JOBS} finished jobs")
        state = folder / "history"
        state.mkdir()
        db = state / "dispatch.sqlite3"
        fill_history(db, HISTORY_JOBS)
        conn = sqlite3.connect(db)
        last_id = conn.execute("SELECT job_id FROM history ORDER BY seq DESC LIMIT 1").fetchone()[0]
        conn.close()
        from sysadm_dispatch.store.migrations import open_database

        checks = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            checked, _ = open_database(str(db), time.time())
            checks.append(time.perf_counter() - started)
            checked.close()
        with children_stopped_on_exit() as children:
            port = start_server(children, "file", state, users)
            ours = asyncio.run(history_queries(port, last_id))
        bare = bare_queries(db, last_id)
        result["history"] = {
            "jobs": HISTORY_JOBS, "db_bytes": os.path.getsize(db), "queries_each": QUERIES,
            "ours": ours, "bare_sql": bare,
            "ratio": {name: round(ours[name]["median_ms"] / bare[name]["median_ms"], 2) for name in bare},
            "startup_check_s": round(statistics.median(checks), 3),
        }
    result["machine"] = host
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
