"""Benchmark ``PUT /rpc/dispatcher {"action": "list"}`` over REST.

Drives sysadm-dispatch and a bare Klein server (same reactor, same reply
bytes, no work) with wrk over keep-alive connections, 1 and 16 at a time,
and prints one JSON line with req/s, p50/p99 latency and ours/bare ratios.
See docs/benchmarks.rst.

    python bench/rest_list.py [--seconds 5] [--repeat 3] [--warmup 1] [--bare-only]
"""

from __future__ import annotations

import base64
import http.client
import json
import resource
import shutil
import subprocess
from pathlib import Path

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
    run_main,
    start_bare_server,
    start_our_server,
    workspace,
)

PATH = "/rpc/dispatcher"
REQUEST_BODY = '{"action":"list"}'
# Our reply with no jobs; the bare server's body only with --bare-only (else
# it gets the body our server actually sent).
DEFAULT_REPLY = b'{"args":{"jobs":{}}}'
CONCURRENCY = (1, 16)
WRK_MARK = "WRK_RESULT "

# The request is set up here and the result printed as JSON from done(), so
# nothing depends on the layout of wrk's human-readable report.
WRK_SCRIPT = """\
wrk.method = "PUT"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = %(authorization)s

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"p50_us":%%.1f,"p99_us":%%.1f,'
    .. '"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def lua_string(text: str) -> str:
    # A JSON string literal is a valid Lua string literal for the ASCII we send.
    return json.dumps(text)


def authorization() -> str:
    credentials = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    return f"Basic {credentials}"


def probe(port: int, what: str) -> bytes:
    """One request by hand: the reply must be a 200 with a JSON body; return the body."""
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(
            "PUT",
            PATH,
            body=REQUEST_BODY,
            headers={
                "Authorization": authorization(),
                "Content-Type": "application/json",
            },
        )
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise BenchError(f"{what} answered {response.status}: {body[:200]!r}")
    reply = json.loads(body)
    if not isinstance(reply, dict) or not isinstance(reply.get("args"), dict) or "jobs" not in reply["args"]:
        raise BenchError(f"{what} answered an unexpected body: {body[:200]!r}")
    return body


def run_wrk(wrk: str, script: Path, target: Target, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run; return req/s, latency percentiles and CPU use of server and wrk."""
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://{HOST}:{target.port}{PATH}",
    ]
    server_cpu = cpu_seconds(target.pid)
    client_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    server_cpu = cpu_seconds(target.pid) - server_cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - client_cpu.ru_utime) + (after.ru_stime - client_cpu.ru_stime)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(WRK_MARK)]
    if completed.returncode != 0 or not lines:
        raise BenchError(f"wrk failed ({completed.returncode}): {completed.stderr.strip() or completed.stdout}")
    result = json.loads(lines[0][len(WRK_MARK) :])
    errors = {key: result[key] for key in ("connect", "read", "write", "status", "timeout") if result[key]}
    if errors.get("status"):
        raise BenchError(f"{target.name} answered {errors['status']} requests with a status >= 400")
    if errors:
        log(f"{target.name} c={connections}: socket errors {errors}")
    if not result["requests"]:
        raise BenchError(f"{target.name} completed no request in {seconds} s")
    wall = result["duration_us"] / 1e6
    sample = {
        "rps": result["requests"] / wall,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "server_cpu": server_cpu / wall,
        "server_us_per_req": server_cpu / result["requests"] * 1e6,
        "client_cpu": wrk_cpu / wall,
    }
    log(
        f"{target.name} c={connections}: {sample['rps']:.0f} req/s, p50 {sample['p50_ms']:.2f} ms, "
        f"p99 {sample['p99_ms']:.2f} ms, server cpu {sample['server_cpu']:.2f}, wrk cpu {sample['client_cpu']:.2f}"
    )
    return sample


def wrk_version(wrk: str) -> str:
    # "wrk -v" prints its banner and exits non-zero.
    banner = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False).stdout
    return " ".join(banner.split()[:2])


def main() -> int:
    parser = base_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--server-option", action="append", default=[], metavar="OPTION",
                        help="an option for our server's command line, e.g. --server-option=--no-dashboard "
                        "(repeatable)")
    args = parse_base_arguments(parser)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk not found on PATH: install it (apt-get install wrk)")
    stopwatch = Stopwatch()
    with workspace("bench-rest-") as (workdir, children):
        targets = []
        body = DEFAULT_REPLY
        if not args.bare_only:
            ours = start_our_server(children, workdir, args.server_option)
            body = probe(ours.rest_port, "sysadm-dispatch")
            targets.append(Target("ours", ours.process.pid, ours.rest_port))
        bare_process, bare_port = start_bare_server(children, "klein", ["--body", body.decode()])
        if probe(bare_port, "bare klein") != body:
            raise BenchError("the bare server's body differs from ours")
        targets.append(Target("bare", bare_process.pid, bare_port))

        script = workdir / "list.lua"
        script.write_text(
            WRK_SCRIPT
            % {
                "body": lua_string(REQUEST_BODY),
                "authorization": lua_string(authorization()),
                "mark": WRK_MARK,
            }
        )
        for target in targets if args.warmup else ():
            log(f"warming up {target.name}")
            run_wrk(wrk, script, target, max(CONCURRENCY), args.warmup)

        samples: dict[int, dict[str, list[dict[str, float]]]] = {c: {t.name: [] for t in targets} for c in CONCURRENCY}
        for repeat in range(args.repeat):
            # Alternate who goes first so slow drift on a shared machine hits both alike.
            order = targets if repeat % 2 == 0 else targets[::-1]
            for connections in CONCURRENCY:
                for target in order:
                    samples[connections][target.name].append(run_wrk(wrk, script, target, connections, args.seconds))

    stopwatch.emit(
        {
            "bench": "rest_list",
            "seconds": args.seconds,
            "repeat": args.repeat,
            "reply_bytes": len(body),
            "server_options": args.server_option,
            "wrk": wrk_version(wrk),
            "results": {str(c): compare(runs) for c, runs in samples.items()},
        }
    )
    return 0


if __name__ == "__main__":
    run_main(main)
