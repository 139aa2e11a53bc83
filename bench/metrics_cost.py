"""Benchmark what the Prometheus metrics cost per job and per scrape, in one process.

A dispatcher (no store, no processes) with the metrics attached is told
that jobs were submitted, started and finished, as it tells its observers
when real jobs do; the time per job is compared, in the same run, with the
time of one ``job.record()`` (the finished record the dispatcher makes for
every job anyway).  Then the ``/metrics`` page is made, as a scrape does,
with the default queues.  Prints one JSON line.  See docs/benchmarks.rst.

    python bench/metrics_cost.py [--jobs 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from _common import Stopwatch, log
from twisted.internet.task import Clock

from sysadm_dispatch.core.dispatcher import Dispatcher
from sysadm_dispatch.core.job import Job
from sysadm_dispatch.core.spec import Limits, specs_from_run_args
from sysadm_dispatch.ops.metrics import DispatchMetrics


def jobs(dispatcher: Dispatcher, count: int) -> list[Job]:
    args = {"jobs": [{"id": f"j{i}", "commands": "true", "queue": ("no_queue", "pkg_queue")[i % 2]}
                     for i in range(count)]}
    limits = Limits(max_jobs_per_run=count)
    made = [Job(spec, 1 << 20, 0.0) for spec in specs_from_run_args(args, dispatcher.queues, limits)]
    for i, job in enumerate(made):
        job.start(0.001 * (i % 50))
        job.end_command(0 if i % 3 else 1)
        job.finish(0.5 + 0.001 * (i % 50))
    return made


def per_job(fn: Any, made: list[Job]) -> float:
    """Microseconds per job of ``fn(job)``."""
    started = time.perf_counter()
    for job in made:
        fn(job)
    return (time.perf_counter() - started) / len(made) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    stopwatch = Stopwatch()
    dispatcher = Dispatcher(Clock())
    metrics = DispatchMetrics(dispatcher)
    made = jobs(dispatcher, args.jobs)
    tell = dispatcher.runs.tell

    def counted(job: Job) -> None:
        tell(job, "submitted")
        tell(job, "started")
        tell(job, "finished")

    samples: dict[str, list[float]] = {"counting_us_per_job": [], "record_us_per_job": [], "scrape_ms": []}
    for repeat in range(args.repeat):
        samples["counting_us_per_job"].append(per_job(counted, made))
        samples["record_us_per_job"].append(per_job(lambda job: job.record(), made))
        started = time.perf_counter()
        for _ in range(20):
            metrics.exposition(None)
        samples["scrape_ms"].append((time.perf_counter() - started) / 20 * 1e3)
        log(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in samples.items()))
    median = {key: round(statistics.median(values), 3) for key, values in samples.items()}
    median["counting_to_record"] = round(median["counting_us_per_job"] / median["record_us_per_job"], 3)
    stopwatch.emit({"bench": "metrics_cost", "jobs": args.jobs, "repeat": args.repeat, "median": median,
                    "runs": {key: [round(v, 3) for v in values] for key, values in samples.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
