"""
``running`` updates: the first output of a job goes out at once (a leading
edge throttle), and one update carries at most ``MAX_UPDATE_BYTES`` of
output, the rest following on the next turns.
"""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from conftest import PYTHON, Server, WSClient
from fakes import FakeRunner
from twisted.internet.task import Clock

from sysadm_dispatch.core.dispatcher import Dispatcher
from sysadm_dispatch.core.job import MAX_UPDATE_BYTES, Job
from sysadm_dispatch.core.log import CappedLog
from sysadm_dispatch.core.spec import JobSpec

ensure = pytest_twisted.ensureDeferred


async def timed_events(client: WSClient, job_id: str) -> list[tuple[float, dict[str, Any]]]:
    out = []
    while True:
        event = (await client.next_event())["args"]
        if event["process_id"] == job_id:
            out.append((time.monotonic(), event))
            if event["state"] == "finished":
                return out


@ensure
async def test_the_first_output_goes_out_at_once_at_the_default_interval(server: Server) -> None:
    client = await server.ws()
    await client.call("subscribe", ["dispatcher"], namespace="events")
    command = "sh -c 'echo line; sleep 2'"
    await server.run({"first": command})
    events = await timed_events(client, "first")
    [started] = [t for t, e in events if e["state"] == "running" and e["update"] == 0]
    [seen] = [t for t, e in events if e["state"] == "running" and e["process_details"].get(command) == "line\n"]
    finished = events[-1][0]
    # The old throttle held it a whole interval (1 s) after the start.
    assert seen - started < 0.6 and finished - seen > 1.4, (seen - started, finished - seen, events)


def test_one_update_carries_at_most_the_bound_the_rest_follows() -> None:
    job = Job(JobSpec("j", ("a", "b"), (("a",), ("b",))), 1 << 20, 0.0)
    job.start(0.0)
    first = "\u00e9" * 100_000  # two bytes each: the bound falls inside characters too
    job.begin_command().write(first.encode())
    job.end_command(0)
    job.begin_command().write(b"b" * 1000)
    pieces: list[dict[str, Any]] = []
    cuts = []
    while job.has_unstreamed_output():
        pieces.append(job.running_update())
        cuts.append(job.cut)
        assert sum(len(v.encode()) for k, v in pieces[-1].items() if k in ("a", "b")) <= MAX_UPDATE_BYTES
    assert cuts == [True] * (len(pieces) - 1) + [False]
    assert "".join(p.get("a", "") for p in pieces) == first
    assert "".join(p.get("b", "") for p in pieces) == "b" * 1000
    assert len(pieces) == -(-(200_000 + 1000) // MAX_UPDATE_BYTES)


def test_the_bound_skips_what_the_cap_dropped_in_one_marker() -> None:
    log = CappedLog(200_000)
    log.write(b"x" * 1_000_000)
    data, offset = log.since(0, limit=MAX_UPDATE_BYTES)
    assert (len(data), offset, log.short) == (MAX_UPDATE_BYTES, MAX_UPDATE_BYTES, True)
    data, offset = log.since(100_000, limit=MAX_UPDATE_BYTES)
    assert data.startswith(b"\n[sysadm-dispatch: 800000 bytes of output dropped here]\n")
    assert offset == 900_000 + MAX_UPDATE_BYTES and log.short


def test_a_big_burst_goes_out_in_bounded_updates_on_consecutive_turns() -> None:
    clock = Clock()

    FakeRunner.made.clear()
    made = FakeRunner.made
    dispatcher = Dispatcher(clock, update_interval=1.0, runner_factory=FakeRunner)
    updates: list[tuple[float, str]] = []
    dispatcher.events.subscribe("dispatcher", lambda e: updates.append(
        (clock.seconds(), e.args["process_details"].get("cmd", ""))) if e.args["state"] == "running" else None)
    dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [{"id": "j", "commands": "cmd"}]}))
    [runner] = made
    burst = b"y" * (3 * MAX_UPDATE_BYTES + 10)
    runner.job.logs[0].write(burst)
    runner.on_output(runner.job, 0, burst)
    for _ in range(6):
        clock.advance(0)
    output = [(t, text) for t, text in updates[1:]]
    assert [len(text) for _, text in output] == [MAX_UPDATE_BYTES] * 3 + [10]
    assert {t for t, _ in output} == {0.0}, "all of it at once, over consecutive turns"
    # Later output waits for the interval since the last piece.
    runner.job.logs[0].write(b"z")
    runner.on_output(runner.job, 0, b"z")
    clock.advance(0.5)
    assert len(updates) == 5
    clock.advance(0.5)
    assert updates[-1] == (1.0, "z")


@ensure
async def test_a_fast_reader_gets_a_big_output_in_bounded_updates(server: Server) -> None:
    client = await server.ws()
    await client.call("subscribe", ["dispatcher"], namespace="events")
    size = 900_000
    # It sleeps after writing: its output goes out in updates, not only at the end.
    command = f"{PYTHON} -c \"import sys, time; sys.stdout.write('q' * {size}); sys.stdout.flush(); time.sleep(1.5)\""
    await server.run({"big": command})
    events = await timed_events(client, "big")
    texts = [e["process_details"].get(command, "") for _, e in events if e["state"] == "running"]
    assert all(len(t.encode()) <= MAX_UPDATE_BYTES for t in texts), [len(t) for t in texts]
    streamed = "".join(texts)
    assert len(streamed) == size, "all of it streamed before the end, in bounded pieces"
    final = events[-1][1]["process_details"][command]
    assert final == "q" * size and final.startswith(streamed), len(streamed)
    assert client.close_code is None, "a client that reads is never dropped"


@ensure
async def test_the_next_command_starting_is_news_even_without_output(server: Server, tmp_path: Any) -> None:
    # The first command's exit code and the second's start reach a follower
    # while the second still runs, though neither printed anything since.
    client = await server.ws()
    await client.call("subscribe", ["dispatcher"], namespace="events")
    gate = tmp_path / "gate"
    second = f"sh -c 'while [ ! -e {gate} ]; do sleep 0.02; done'"
    first = "sh -c 'echo first; sleep 0.3'"  # its output goes out before it ends
    await server.run({"jobs": [{"id": "chain", "commands": [first, second]}]})
    while True:
        event = (await client.next_event())["args"]
        assert event["state"] != "finished", event
        details = event["process_details"]
        if event["state"] == "running" and details.get(f"return_codes/{first}") == "0":
            assert details["current_cmd"] == second
            break
    gate.write_text("")
    while (await client.next_event())["args"]["state"] != "finished":
        pass
