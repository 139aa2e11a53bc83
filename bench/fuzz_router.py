"""Fuzz the router with a large budget (tests/integration/test_fuzz.py runs a small one in CI).

The same Hypothesis strategies and checks as the test: arbitrary JSON, random
envelopes and random args from anonymous, full, read-only and blocked
clients, first in memory through ``Router.handle_bytes`` (``--examples``),
then through a real server over real WebSocket and REST connections
(``--real-examples``).  Every request gets exactly one valid reply (none for
``auth_clear``), never a 500; a rejected request changes nothing; the
connection stays usable.

Prints one JSON line: the examples and messages checked, how long they took,
and, as the raw limit of this machine, how fast the same messages are merely
parsed and a reply encoded (``json`` alone), with the ratio between the two.
Exits 1 with the falsifying example if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="in-memory examples (default 20000)")
    parser.add_argument("--real-examples", type=int, default=500,
                        help="examples through a real server (default 500; 0 skips)")
    args = parser.parse_args()

    import test_fuzz
    from fuzz_strategies import batches

    messages: list[bytes] = []
    world = test_fuzz.world()

    @settings(max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(kind=st.sampled_from(test_fuzz.KINDS), batch=batches)
    def in_memory(kind: str, batch: list[bytes]) -> None:
        messages.extend(batch)
        try:
            test_fuzz.check_batch(world, world.session(kind), batch)
        finally:
            world.reset()

    result: dict[str, Any] = {"bench": "fuzz_router", "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                              "python": platform.python_version()}
    start = time.perf_counter()
    try:
        in_memory()
    except Exception:
        result.update(ok=False, failure=traceback.format_exc(limit=3))
        print(json.dumps(result))
        return 1
    seconds = time.perf_counter() - start
    raw = raw_json_rate(messages)
    result.update(examples=args.examples, messages=len(messages), seconds=round(seconds, 2),
                  messages_per_second=round(len(messages) / seconds), raw_json_messages_per_second=round(raw),
                  ratio_to_raw=round(len(messages) / seconds / raw, 4))
    if args.real_examples:
        real = run_real(args.real_examples)
        result.update(real)
        if not real["real_ok"]:
            print(json.dumps(result))
            return 1
    result["ok"] = True
    print(json.dumps(result))
    return 0


def raw_json_rate(messages: list[bytes]) -> float:
    """Messages per second that ``json`` alone parses and answers: the floor cost of any router."""
    reply = {"namespace": "rpc", "name": "error", "id": "", "args": {"code": 400, "message": "Bad Request",
                                                                        "detail": "x"}}
    start = time.perf_counter()
    for data in messages:
        try:
            json.loads(data)
        except ValueError:
            pass
        json.dumps(reply)
    return len(messages) / (time.perf_counter() - start)


def run_real(examples: int) -> dict[str, Any]:
    from conftest import start_server
    from fuzz_strategies import batches
    from test_fuzz import check_over_rest, check_over_websocket
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.threads import blockingCallFromThread, deferToThread

    outcome: dict[str, Any] = {"real_examples": examples}

    async def serve() -> None:
        with tempfile.TemporaryDirectory(prefix="fuzz-router-") as directory:
            server = await start_server(os.path.join(directory, "state"), "--max-failed-logins", "1000000")
            empty = os.path.join(directory, "empty-path")
            os.mkdir(empty)
            server.dispatcher.environ = {"PATH": empty}
            server.add_user("full", "full", "pw")
            server.add_user("reader", "read", "pw")

            @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(kind=st.sampled_from(["anonymous", "full", "reader"]), batch=batches)
            def check(kind: str, batch: list[bytes]) -> None:
                credentials = (kind, "pw") if kind != "anonymous" else None

                async def both() -> None:
                    await check_over_websocket(server, kind, batch)
                    await check_over_rest(server, batch, credentials)

                blockingCallFromThread(reactor, lambda: ensureDeferred(both()))

            start = time.perf_counter()
            try:
                await deferToThread(check)
                outcome["real_ok"] = True
            except Exception:
                outcome.update(real_ok=False, real_failure=traceback.format_exc(limit=3))
            outcome["real_seconds"] = round(time.perf_counter() - start, 2)
            await server.stop()

    def go() -> None:
        d = ensureDeferred(serve())
        d.addErrback(lambda f: outcome.update(real_ok=False, real_failure=f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    return outcome


if __name__ == "__main__":
    sys.exit(main())
