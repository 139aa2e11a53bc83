"""Plumbing shared by the benchmark scripts in this folder.

Each script runs our server and a bare server as child processes on
127.0.0.1, drives both with the same load generator, and prints one JSON
line.  What the fields mean is in ``docs/benchmarks.rst``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TextIO

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BIN_DIR = Path(sys.executable).parent
USERNAME = "bench"
PASSWORD = "benchpw"
PORT_WAIT_SECONDS = 30.0
STOP_GRACE_SECONDS = 5.0


class BenchError(Exception):
    """A benchmark cannot run (missing tool, server that does not start, bad reply)."""


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the JSON result line."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def base_arguments(description: str) -> argparse.ArgumentParser:
    """The options every script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--seconds",
        type=int,
        default=5,
        help="length of one measured run, whole seconds (default 5)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="measured runs per case; medians are reported (default 3)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="seconds of unmeasured load per server first (default 1)",
    )
    parser.add_argument(
        "--bare-only",
        action="store_true",
        help="measure only the bare server (to test the bench without our server)",
    )
    return parser


def check_base_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= args.seconds <= 300:
        parser.error("--seconds must be in [1, 300]")
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be in [1, 50]")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup must be in [0, 60]")


def parse_base_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line of a parser from ``base_arguments`` and check the common options."""
    args = parser.parse_args()
    check_base_arguments(parser, args)
    return args


def free_port() -> int:
    """A port that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    """Poll until ``port`` accepts connections, or fail if ``process`` died or time ran out."""
    deadline = time.monotonic() + PORT_WAIT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with status {process.returncode} before listening")
        with (
            contextlib.suppress(OSError),
            socket.create_connection((HOST, port), timeout=1),
        ):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on {HOST}:{port} within {PORT_WAIT_SECONDS:.0f} s")


class Children:
    """Child processes, each in its own process group, all stopped by ``stop_all``."""

    def __init__(self) -> None:
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self,
        what: str,
        argv: Sequence[str | Path],
        *,
        cwd: Path | None = None,
        output: TextIO | None = None,
        environment: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log(f"starting {what}")
        process = subprocess.Popen(
            [str(arg) for arg in argv],
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output if output is not None else sys.stderr,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._processes.append((what, process))
        return process

    def stop_all(self) -> None:
        """TERM every group, then KILL whatever is left after a grace period."""
        for _, process in self._processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for what, process in self._processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{what} ignored SIGTERM; killing it")
            # KILL the group even when the leader exited: its children may linger.
            _signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_GRACE_SECONDS)
        self._processes.clear()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


@contextlib.contextmanager
def children_stopped_on_exit() -> Iterator[Children]:
    """Yield a ``Children`` whose processes are stopped however the block ends.

    SIGTERM and SIGHUP become ``SystemExit`` so that being killed still cleans up.
    """

    def exit_on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    children = Children()
    try:
        yield children
    finally:
        children.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def workspace(prefix: str) -> Iterator[tuple[Path, Children]]:
    """A temporary folder and a ``Children`` (see ``children_stopped_on_exit``).

    On the way out the children are stopped first, then the folder is removed.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, children_stopped_on_exit() as children:
        yield Path(tmp), children


@dataclass(frozen=True)
class Target:
    """A server under load: ``ours`` or ``bare``, its process and its port."""

    name: str
    pid: int
    port: int


@dataclass(frozen=True)
class OurServer:
    process: subprocess.Popen[bytes]
    ws_port: int
    rest_port: int
    log_path: Path


def start_our_server(children: Children, workdir: Path, options: Sequence[str] = ()) -> OurServer:
    """
    Create the bench user and run sysadm-dispatch under twistd, both
    listeners on free ports (with ``options`` added to its command line).
    """
    cli = BIN_DIR / "sysadm-dispatch"
    twistd = BIN_DIR / "twistd"
    for tool in (cli, twistd):
        if not tool.exists():
            raise BenchError(
                f"{tool} not found: install the project into this interpreter's environment "
                f"({BIN_DIR / 'pip'} install -e .), or pass --bare-only"
            )
    users = workdir / "users"
    subprocess.run(
        [str(cli), "user", "add", USERNAME, "--role", "full", "--users", str(users)],
        input=f"{PASSWORD}\n".encode(),
        stdout=sys.stderr,
        stderr=sys.stderr,
        check=True,
        timeout=60,
    )
    ws_port, rest_port = free_port(), free_port()
    # The checkout first on sys.path: the server measured is the code of this
    # checkout (and its twisted/plugins/), whatever else the venv holds.
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), environment.get("PYTHONPATH")]))
    log_path = workdir / "server.log"
    with log_path.open("w") as output:
        process = children.spawn(
            "sysadm-dispatch",
            [
                twistd,
                "-n",
                "--pidfile=",
                "sysadm-dispatch",
                "--ws",
                f"tcp:{ws_port}:interface={HOST}",
                "--rest",
                f"tcp:{rest_port}:interface={HOST}",
                "--state-dir",
                workdir,
                "--users",
                users,
                *options,
            ],
            cwd=workdir,
            output=output,
            environment=environment,
        )
    try:
        wait_for_port(ws_port, process, "sysadm-dispatch (WebSocket)")
        wait_for_port(rest_port, process, "sysadm-dispatch (REST)")
    except BenchError:
        log(f"server log tail:\n{tail(log_path)}")
        raise
    return OurServer(process, ws_port, rest_port, log_path)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(cannot read {path}: {error})"


def start_bare_server(children: Children, kind: str, extra: Sequence[str]) -> tuple[subprocess.Popen[bytes], int]:
    """Run ``bare_servers.py KIND`` on a free port and wait until it listens."""
    port = free_port()
    process = children.spawn(
        f"bare {kind} server",
        [
            sys.executable,
            BENCH_DIR / "bare_servers.py",
            kind,
            "--port",
            str(port),
            *extra,
        ],
    )
    wait_for_port(port, process, f"bare {kind} server")
    return process, port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" that closes comm, utime and stime are fields 12 and 13 (0-based 11, 12).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(samples: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Median of each field over the repeats, plus the raw per-repeat values."""
    keys = samples[0].keys()
    median = {key: round(statistics.median(sample[key] for sample in samples), 4) for key in keys}
    raw = {key: [round(sample[key], 4) for sample in samples] for key in keys}
    return {"median": median, "runs": raw}


def compare(runs_by_target: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Summaries per target and, when both ran, the ours / bare ratios.

    Each ratio is the median over the repeats of ours / bare within one repeat,
    the two runs measured back to back, so drift in the machine's background
    load between repeats cancels out.  A throughput ratio below 1 and latency
    ratios above 1 mean we are slower.
    """
    entry: dict[str, Any] = {name: summarize(runs) for name, runs in runs_by_target.items()}
    if "ours" in runs_by_target and "bare" in runs_by_target:
        pairs = list(zip(runs_by_target["ours"], runs_by_target["bare"], strict=True))
        entry["ratio"] = {
            key: round(statistics.median(ours[key] / bare[key] for ours, bare in pairs), 4)
            for key in ("rps", "p50_ms", "p99_ms", "server_us_per_req")
        }
    return entry


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for package in ("sysadm-dispatch", "twisted", "klein", "autobahn", "uvloop"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "versions": versions,
    }


def emit(result: dict[str, Any]) -> None:
    """The one line on stdout."""
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Stopwatch:
    """Started, and the machine described, before any load (so its load average is the background)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.host = machine()

    def emit(self, result: dict[str, Any]) -> None:
        """``emit`` the result with ``machine`` and ``elapsed_s`` added at the end."""
        emit({**result, "machine": self.host, "elapsed_s": round(time.monotonic() - self.started, 1)})


def run_main(main: Callable[[], int], *errors: type[Exception]) -> NoReturn:
    """Exit with ``main()``'s status; a ``BenchError`` (or one of ``errors``) is logged and exits 1."""
    try:
        sys.exit(main())
    except (BenchError, *errors) as error:
        log(f"error: {error}")
        sys.exit(1)
