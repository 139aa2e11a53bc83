"""Benchmark the job store alone: ``Store.add`` requests per second on the reactor.

A closed loop of ``add`` requests (one new job each) with 1 and with 16
requests in flight, against a store in memory and in a file, with nothing
else in the process: what the hand-off to the writer thread and back costs
a request, and how requests waiting together share a commit.  Prints one
JSON line; see docs/benchmarks.rst ("The store's writer thread").

    python bench/store_alone.py [--seconds 1.5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from typing import Any

from twisted.internet import defer, task

from sysadm_dispatch import Store
from sysadm_dispatch.core.job import JobSpec

IN_FLIGHT = (1, 16)


async def rate(reactor: Any, path: str, in_flight: int, seconds: float) -> float:
    store = Store(path, reactor)
    await store.open()
    done = [0]
    end = reactor.seconds() + seconds

    async def client(n: int) -> None:
        i = 0
        while reactor.seconds() < end:
            i += 1
            await store.add([(JobSpec(f"c{n}-{i}", ("true",), (("true",),), "q"), 1.0, None)])
            done[0] += 1

    await defer.gatherResults([defer.ensureDeferred(client(n)) for n in range(in_flight)])
    await store.close()
    return done[0] / seconds


async def main(reactor: Any, args: argparse.Namespace) -> None:
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.repeat):
            for mode in ("memory", "file"):
                for in_flight in IN_FLIGHT:
                    path = ":memory:" if mode == "memory" else os.path.join(directory, f"{in_flight}.sqlite3")
                    runs.setdefault(f"{mode}/{in_flight}", []).append(
                        round(await rate(reactor, path, in_flight, args.seconds)))
    print(json.dumps({"bench": "store_alone", "seconds": args.seconds, "repeat": args.repeat,
                      "median_rps": {k: statistics.median(v) for k, v in runs.items()}, "runs": runs}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
