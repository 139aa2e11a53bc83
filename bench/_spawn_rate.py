"""The spawn path alone, in one process: run by ``jobs_rate.py``, prints one JSON line.

Three ways to run ``/bin/true`` to its end, ``depth`` at a time, for a number
of seconds each, on a real Twisted reactor:

* ``raw``: ``os.posix_spawn`` + ``waitpid``, the machine's limit;
* ``runner``: the dispatcher's ``JobRunner`` (spawn, output pipe, exit watch,
  the end-of-job look for leftovers), with a bare ``Job``, on the ``fast``
  backend (``--spawner fast``);
* ``runner_twisted``: the same ``JobRunner`` on the ``twisted`` backend;
* ``twisted``: ``reactor.spawnProcess`` through util-linux ``setsid`` with
  the output on one pipe, bare.

Each is measured with no other descriptor open and with ``--fds`` extra open
descriptors, as a server with that many connections has.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ProcessProtocol

from sysadm_dispatch.core.job import Job
from sysadm_dispatch.core.spec import specs_from_run_args
from sysadm_dispatch.process.procs import ProcessTracker
from sysadm_dispatch.process.runner import JobRunner

PROGRAM = "/bin/true"
SETSID = shutil.which("setsid") or "/usr/bin/setsid"
ENV = dict(os.environ)


def raw(depth: int, seconds: float) -> float:
    pending: deque[int] = deque()
    done = 0
    started = time.perf_counter()
    for _ in range(depth):
        pending.append(os.posix_spawn(PROGRAM, [PROGRAM], ENV))
    while pending:
        os.waitpid(pending.popleft(), 0)
        done += 1
        if time.perf_counter() < started + seconds:
            pending.append(os.posix_spawn(PROGRAM, [PROGRAM], ENV))
    return done / (time.perf_counter() - started)


class _Ended(ProcessProtocol):
    def __init__(self, done: Any) -> None:
        self.done = done

    def processEnded(self, reason: Any) -> None:
        self.done()


async def reactor_loop(depth: int, seconds: float, start_one: Any) -> float:
    finished: Deferred[None] = Deferred()
    state = {"done": 0, "in_flight": 0}
    started = time.perf_counter()

    def one_done() -> None:
        state["done"] += 1
        state["in_flight"] -= 1
        if time.perf_counter() < started + seconds:
            launch()
        elif not state["in_flight"] and not finished.called:
            finished.callback(None)

    def launch() -> None:
        state["in_flight"] += 1
        start_one(one_done)

    for _ in range(depth):
        launch()
    await finished
    return state["done"] / (time.perf_counter() - started)


SPEC = specs_from_run_args({"jobs": [{"id": "b", "commands": PROGRAM}]}, ["no_queue"])[0]


TRACKERS = {name: ProcessTracker(reactor, spawner=name) for name in ("fast", "twisted")}  # type: ignore[arg-type]


def start_runner(done: Any, spawner: str = "fast") -> None:
    job = Job(SPEC, 1 << 20, 0.0)
    job.start(0.0)
    JobRunner(reactor, job, environ=ENV, kill_grace=5, processes=TRACKERS[spawner]  # type: ignore[arg-type]
              ).start().addCallback(lambda _: done())


def start_runner_twisted(done: Any) -> None:
    start_runner(done, "twisted")


def start_twisted(done: Any) -> None:
    read_fd, write_fd = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        reactor.spawnProcess(_Ended(done), SETSID, [SETSID, "--", PROGRAM], env=ENV,
                             childFDs={0: devnull, 1: write_fd, 2: write_fd})
    finally:
        os.close(write_fd)
        os.close(devnull)
    os.close(read_fd)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    extra: list[int] = []
    for fds in (0, args.fds):
        while len(extra) < fds:
            extra.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        case: dict[str, Any] = {}
        for depth in (1, 8, 64):
            runs: dict[str, list[float]] = {"raw": [], "runner": [], "runner_twisted": [], "twisted": []}
            for _ in range(args.repeat):
                runs["raw"].append(raw(depth, args.seconds))
                runs["runner"].append(await reactor_loop(depth, args.seconds, start_runner))
                runs["runner_twisted"].append(await reactor_loop(depth, args.seconds, start_runner_twisted))
                runs["twisted"].append(await reactor_loop(depth, args.seconds, start_twisted))
            medians = {name: round(statistics.median(values), 1) for name, values in runs.items()}
            case[f"depth_{depth}"] = {
                "jobs_per_s": medians,
                "runs": {name: [round(v, 1) for v in values] for name, values in runs.items()},
                "ratio_runner": round(medians["runner"] / medians["raw"], 4),
                "ratio_runner_twisted": round(medians["runner_twisted"] / medians["raw"], 4),
                "ratio_twisted": round(medians["twisted"] / medians["raw"], 4),
            }
            print(f"[bench] in-process, {fds} extra fds, depth {depth}: {medians}", file=sys.stderr, flush=True)
        out[f"{fds}_extra_fds"] = case
    for fd in extra:
        os.close(fd)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fds", type=int, default=1000)
    arguments = parser.parse_args()
    result: dict[str, Any] = {}

    async def run(_: Any) -> None:
        result.update(await main(arguments))

    try:
        task.react(lambda r: ensureDeferred(run(r)))
    except SystemExit:
        pass
    print(json.dumps(result, separators=(",", ":")))
