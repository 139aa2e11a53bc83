"""
Live job events: subscriptions, the pending/running/finished sequence,
streamed output, fan-out, and slow clients.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest_twisted
from conftest import BOTH_SPAWNERS, HERE, PYTHON, Server, WSClient, poll, with_timeout
from fakes import FakeRunner
from ops_helpers import metrics_port, scrape, value
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from sysadm_dispatch.core.dispatcher import Dispatcher
from sysadm_dispatch.core.events import EventHub

ensure = pytest_twisted.ensureDeferred


async def events_until_finished(client: WSClient, job_id: str, seconds: float = 20) -> list[dict[str, Any]]:
    """The events of ``job_id`` that ``client`` receives, up to its finished event."""
    seen = []
    while True:
        event = await client.next_event(seconds)
        assert event["namespace"] == "events" and event["name"] == "dispatcher" and event["id"] == ""
        if event["args"]["process_id"] != job_id:
            continue
        seen.append(event["args"])
        if event["args"]["state"] == "finished":
            return seen


@BOTH_SPAWNERS
@ensure
async def test_event_sequence_and_streamed_output(make_server) -> None:
    server = await make_server("--update-interval", "0.2")
    client = await server.ws()
    reply = await client.call("subscribe", "dispatcher", namespace="events")
    assert reply["namespace"] == "events" and reply["args"] == {"subscribe": "dispatcher"}
    first = "sh -c 'echo a; sleep 0.6; echo b; sleep 0.6; printf c'"
    await server.run({"jobs": [{"id": "talk", "commands": [first, "echo done"], "queue": "pkg_queue"}]})
    events = await events_until_finished(client, "talk")
    states = [e["state"] for e in events]
    assert states[0] == "pending" and states[1] == "running" and states[-1] == "finished"
    assert set(states[2:-1]) <= {"running"}
    updates = [e["process_details"] for e in events[2:-1]]
    # The output came out over several intervals, so in several updates,
    # each carrying only what was new.
    chunks = [u.get(first, "") for u in updates]
    assert len([c for c in chunks if c]) >= 2
    streamed = "".join(chunks)
    assert streamed == "a\nb\nc"[: len(streamed)] and streamed.startswith("a\nb")
    for u in updates:
        assert u["process_id"] == "talk" and u["state"] == "running" and u["time_started"]
        assert u["cmd_list"] == [first, "echo done"]
    finished = events[-1]
    details = finished["process_details"]
    assert details[first] == "a\nb\nc"
    assert details["echo done"] == "done\n"
    assert details["return_codes/" + first] == "0" and details["return_codes/echo done"] == "0"
    assert details["time_finished"] and details["state"] == "finished"
    assert finished["queue"] == "pkg_queue"
    assert finished["success"] == "true"
    assert finished["killed"] is False and finished["timed_out"] is False and finished["signal"] is None
    pending = events[0]
    assert pending["process_details"]["cmd_list"] == [first, "echo done"]
    assert "time_started" not in pending["process_details"]


@ensure
async def test_unsubscribe_stops_events(server: Server) -> None:
    quiet = await server.ws()
    watcher = await server.ws()
    await quiet.call("subscribe", ["dispatcher"], namespace="events")
    await watcher.call("subscribe", ["dispatcher"], namespace="events")
    reply = await quiet.call("unsubscribe", ["dispatcher", "no-such-event"], namespace="events")
    assert reply["args"] == {"unsubscribe": "dispatcher"}
    await server.run({"after": "true"})
    await events_until_finished(watcher, "after")
    # Anything sent to `quiet` before this reply would have arrived first.
    await quiet.call("dispatcher", {"action": "list"})
    assert len(quiet.events.pending) == 0


@ensure
async def test_subscribe_errors(server: Server) -> None:
    client = await server.ws()
    for args in ("nothing-known", ["also-unknown"], 5, [1], None):
        reply = await client.call("subscribe", args, namespace="events")
        assert reply["name"] == "error" and reply["namespace"] == "events" and reply["args"]["code"] == 400, args
    anonymous = await server.ws(login=None)
    reply = await anonymous.call("subscribe", ["dispatcher"], namespace="events")
    assert reply["args"]["code"] == 401


@ensure
async def test_read_user_receives_events(server: Server) -> None:
    server.add_user("watcher", "read", "watchpw")
    client = await server.ws(login=("watcher", "watchpw"))
    await client.call("subscribe", ["dispatcher"], namespace="events")
    await server.run({"seen": "echo seen"})
    events = await events_until_finished(client, "seen")
    states = [e["state"] for e in events]
    # The output may go out in an update of its own before the end (at once: the job's first).
    assert states[:2] == ["pending", "running"] and states[-1] == "finished" and set(states[2:-1]) <= {"running"}
    assert events[-1]["process_details"]["echo seen"] == "seen\n"


@BOTH_SPAWNERS
@ensure
async def test_killed_pending_job_has_exactly_one_finished_event(server: Server) -> None:
    client = await server.ws()
    await client.call("subscribe", ["dispatcher"], namespace="events")
    await server.run({"jobs": [{"id": "blocker", "commands": "sleep 30", "queue": "pkg_queue"},
                               {"id": "victim", "commands": "echo never", "queue": "pkg_queue"}]})
    await poll(lambda: server.dispatcher.jobs["blocker"].state == "running")
    await server.rest({"action": "kill", "job_id": ["victim"]})
    await server.rest({"action": "kill", "job_id": ["blocker"]})
    victim, blocker = [], []
    while not (blocker and blocker[-1]["state"] == "finished"):
        event = (await client.next_event())["args"]
        (victim if event["process_id"] == "victim" else blocker).append(event)
    await client.call("dispatcher", {"action": "list"})
    while client.events.pending:
        victim.append((await client.next_event())["args"])
    assert [e["state"] for e in victim] == ["pending", "finished"]
    assert victim[-1]["killed"] is True and victim[-1]["success"] == "false"
    assert "echo never" not in victim[-1]["process_details"]
    assert [e["state"] for e in blocker] == ["pending", "running", "finished"]
    assert blocker[-1]["killed"] is True and blocker[-1]["signal"] == "SIGTERM"


@ensure
async def test_200_subscribers_receive_every_event_of_50_jobs(server: Server) -> None:
    first = await server.ws()
    token = first.protocol and (await first.call("auth", {"username": "admin",
                                                          "password": server.admin_password}))["args"][0]
    clients = [first]
    for _ in range(199):
        client = await WSClient.connect(server.ws_port)
        server.clients.append(client)
        reply = await client.call("auth_token", {"token": token})
        assert reply["name"] == "response"
        clients.append(client)
    await DeferredList([_ensure(c.call("subscribe", ["dispatcher"], namespace="events")) for c in clients])
    ids = [f"burst{i}" for i in range(50)]
    await server.run({"jobs": [{"id": i, "commands": "true"} for i in ids]})

    async def collect(client: WSClient) -> dict[str, list[str]]:
        states: dict[str, list[str]] = {i: [] for i in ids}
        done = 0
        while done < len(ids):
            event = (await client.next_event())["args"]
            states[event["process_id"]].append(event["state"])
            done += event["state"] == "finished"
        return states

    results = await DeferredList([_ensure(collect(c)) for c in clients], fireOnOneErrback=True)
    for _, states in results:
        assert states == {i: ["pending", "running", "finished"] for i in ids}


def _ensure(coro: Any) -> Deferred[Any]:
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(coro)


class _Helper(ProcessProtocol):
    """A helper client process: ``ready`` once it prints ``ready``, ``ended`` when it exits."""

    def __init__(self) -> None:
        self.output = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"ready" in self.output and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        if not self.ready.called:
            self.ready.errback(AssertionError(self.output.decode(errors="replace")))


@ensure
async def test_client_that_stops_reading_is_dropped_and_others_keep_receiving(make_server) -> None:
    # A log cap above the flood: every byte of output is streamed, however
    # slowly the server runs, so far more than socket buffers hold is sent.
    server = await make_server("--update-interval", "0.01", "--event-backlog-bytes", str(2 << 20),
                               "--log-cap-bytes", str(64 << 20), "--metrics", "tcp:0:interface=127.0.0.1")
    healthy = await server.ws()
    token = (await healthy.call("auth", {"username": "admin", "password": server.admin_password}))["args"][0]
    await healthy.call("subscribe", ["dispatcher"], namespace="events")
    hub = server.dispatcher.events
    baseline = hub.subscriber_count("dispatcher")
    logged: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "sysadm_dispatch.transports.websocket":
            logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    stuck = _Helper()
    process = reactor.spawnProcess(stuck, PYTHON, [PYTHON, os.path.join(HERE, "helpers", "stuck_client.py"),
                                                   str(server.ws_port), token], env=os.environ)
    try:
        await with_timeout(stuck.ready)
        assert hub.subscriber_count("dispatcher") == baseline + 1
        # A job that talks a lot: many large running updates.
        # About 15 MB over a second or more: more than twice what socket
        # buffers (4 MiB here), the transport and the backlog hold.
        flood = ("python3 -c \"import sys, time\nfor i in range(150): sys.stdout.write('x' * 100000 + chr(10)); "
                 "sys.stdout.flush(); time.sleep(0.004)\"")
        await server.run({"jobs": [{"id": "flood", "commands": flood}]})
        await poll(lambda: hub.subscriber_count("dispatcher") == baseline, 20)
        assert any("not reading fast enough" in line for line in logged), logged
        _, samples = await scrape(metrics_port(server))
        assert value(samples, "sysadm_dispatch_clients_dropped_total", reason="slow_consumer") == 1
        # The healthy client got the whole story, and still gets new events promptly.
        events = await events_until_finished(healthy, "flood", 60)
        assert events[-1]["success"] == "true"
        started = reactor.seconds()
        await server.run({"later": "echo later"})
        later = await events_until_finished(healthy, "later")
        assert later[-1]["process_details"]["echo later"] == "later\n"
        assert reactor.seconds() - started < 10
    finally:
        globalLogPublisher.removeObserver(observe)
        process.closeStdin()
        await with_timeout(stuck.ended)


# Coalescing, driven by a Clock.


def test_running_updates_are_throttled_on_the_leading_edge() -> None:
    clock = Clock()
    dispatcher = Dispatcher(clock, update_interval=1.0, runner_factory=FakeRunner)
    seen: list[tuple[float, str, str]] = []
    dispatcher.events.subscribe(
        "dispatcher",
        lambda e: seen.append((clock.seconds(), e.args["state"], e.args["process_details"].get("cmd", ""))),
    )
    dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [{"id": "j", "commands": "cmd"}]}))
    runner = FakeRunner.made[-1]
    assert [s[1] for s in seen] == ["pending", "running"]
    clock.advance(0.1)
    runner.output(b"one ")
    runner.output(b"two ")
    clock.advance(0)
    # The job's first output goes out at once (what came in the same turn with it).
    assert seen[-1] == (0.1, "running", "one two ")
    clock.advance(0.3)
    runner.output(b"three ")
    clock.advance(0.5)
    assert len(seen) == 3  # sooner than an interval after an update: it waits
    runner.output(b"four ")
    clock.advance(0.2)
    assert seen[-1] == (1.1, "running", "three four ")
    clock.advance(5)
    assert len(seen) == 4  # no output, no update
    runner.output(b"five ")  # the first after a quiet interval: at once
    clock.advance(0)
    assert seen[-1] == (6.1, "running", "five ")
    runner.output(b"six")
    runner.end(0)  # finished before the update was due
    clock.advance(5)
    assert [s[1] for s in seen] == ["pending", "running", "running", "running", "running", "finished"]
    assert seen[-1][2] == "one two three four five six"
    assert not clock.getDelayedCalls()


def test_text_frames_follow_rfc6455_lengths() -> None:
    from sysadm_dispatch.transports.websocket import text_frame

    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
    assert len(text_frame(b"x" * 65536)) == 65546


# The hub: direct and batched subscribers.


def test_batched_subscribers_get_each_turn_s_events_at_once_in_order() -> None:
    clock = Clock()
    hub = EventHub(clock)
    direct: list[str] = []
    batches: list[list[str]] = []
    hub.subscribe("dispatcher", lambda e: direct.append(e.args["n"]))
    hub.subscribe("dispatcher", lambda b: batches.append([e.args["n"] for e in b.events]), batched=True)
    for n in ("a", "b", "c"):
        hub.publish("dispatcher", {"n": n})
    assert direct == ["a", "b", "c"] and batches == []
    clock.advance(0)
    assert batches == [["a", "b", "c"]]
    hub.publish("dispatcher", {"n": "d"})
    clock.advance(0)
    assert batches == [["a", "b", "c"], ["d"]]
    clock.advance(0)
    assert len(batches) == 2  # nothing published, nothing sent


def test_a_batched_subscriber_gets_only_what_was_published_after_it_subscribed() -> None:
    clock = Clock()
    hub = EventHub(clock)
    early: list[list[str]] = []
    late: list[list[str]] = []
    gone: list[Any] = []
    hub.subscribe("dispatcher", lambda b: early.append([e.args["n"] for e in b.events]), batched=True)
    cancelled = hub.subscribe("dispatcher", gone.append, batched=True)
    hub.publish("dispatcher", {"n": "before"})
    hub.subscribe("dispatcher", lambda b: late.append([e.args["n"] for e in b.events]), batched=True)
    hub.publish("dispatcher", {"n": "after"})
    cancelled.cancel()
    assert hub.subscriber_count("dispatcher") == 2
    clock.advance(0)
    assert early == [["before", "after"]] and late == [["after"]] and gone == []


def test_a_failing_batched_subscriber_does_not_keep_events_from_the_others() -> None:
    clock = Clock()
    hub = EventHub(clock)
    got: list[int] = []

    def broken(batch: Any) -> None:
        raise RuntimeError("subscriber bug")

    hub.subscribe("dispatcher", broken, batched=True)
    hub.subscribe("dispatcher", lambda b: got.append(len(b.events)), batched=True)
    errors: list[Any] = []
    globalLogPublisher.addObserver(errors.append)
    try:
        hub.publish("dispatcher", {"n": 1})
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(errors.append)
    assert got == [1]
    assert any("subscriber bug" in str(e.get("log_failure", "")) for e in errors)


@ensure
async def test_a_burst_reaches_each_websocket_subscriber_as_one_write_per_turn(server: Server) -> None:
    clients = [await server.ws() for _ in range(3)]
    for client in clients:
        await client.call("subscribe", ["dispatcher"], namespace="events")
    writes: list[int] = []
    protocols = [s.callback.__self__ for s in server.dispatcher.events._batched["dispatcher"].values()]
    assert len(protocols) == 3
    for protocol in protocols:
        original = protocol.transport.write

        def counting(data: bytes, original: Any = original) -> None:
            writes.append(len(data))
            original(data)

        protocol.transport.write = counting
    jobs = [{"id": f"burst-{i}", "commands": "sleep 30"} for i in range(40)]
    await server.run({"jobs": jobs})
    for client in clients:
        for _ in range(80):  # pending and running of each job, in order per job
            event = (await client.next_event())["args"]
            assert event["state"] in ("pending", "running")
    # 80 events each, in far fewer writes than events (one per reactor turn).
    assert 3 <= len(writes) < 3 * 80 / 4, writes
    await server.rest({"action": "kill", "job_id": [j["id"] for j in jobs]})


def test_a_big_run_starts_a_slice_per_reactor_turn_and_a_waiting_job_can_be_killed() -> None:
    from sysadm_dispatch.core.scheduler import STARTS_PER_TURN

    clock = Clock()
    dispatcher = Dispatcher(clock, runner_factory=FakeRunner)
    states: list[tuple[str, str]] = []
    dispatcher.events.subscribe("dispatcher", lambda e: states.append((e.args["process_id"], e.args["state"])))
    FakeRunner.made.clear()
    ids = [f"s{i:03d}" for i in range(STARTS_PER_TURN * 2 + 5)]
    dispatcher.submit(dispatcher.parse_run({"action": "run", "jobs": [{"id": i, "commands": "cmd"} for i in ids]}))
    assert [r.job.id for r in FakeRunner.made] == ids[:STARTS_PER_TURN]
    assert dispatcher.jobs[ids[-1]].state == "pending"
    dispatcher.kill([ids[-1]])  # waiting its turn: it never starts
    assert len(FakeRunner.made) == STARTS_PER_TURN  # the kill starts nothing more this turn
    clock.advance(0)  # (a Clock runs the following turns' calls at once too)
    assert [r.job.id for r in FakeRunner.made] == ids[:-1]
    assert not clock.getDelayedCalls()
    assert (ids[-1], "running") not in states and states.count((ids[-1], "finished")) == 1
    assert [s for s in states if s[1] == "running"] == [(i, "running") for i in ids[:-1]]


@ensure
async def test_a_client_that_reads_fast_is_never_dropped(make_server) -> None:
    # Six jobs stream about 8 MB each at once, on the default update interval
    # and backlog limit: one turn's batch of running updates is far over the
    # limit, yet a client that reads as fast as it can gets everything.
    server = await make_server("--log-cap-bytes", str(64 << 20))
    admin = await server.ws()
    token = (await admin.call("auth", {"username": "admin", "password": server.admin_password}))["args"][0]
    reader = _Helper()
    reactor.spawnProcess(reader, PYTHON, [PYTHON, os.path.join(HERE, "helpers", "fast_reader.py"),
                                          str(server.ws_port), token, "6"], env=os.environ)
    await with_timeout(reader.ready)
    flood = ("python3 -c \"import sys\nfor i in range(80): sys.stdout.write('x' * 100000 + chr(10)); "
             "sys.stdout.flush()\"")
    ids = await server.run({"jobs": [{"id": f"big-{n}", "commands": flood} for n in range(6)]})
    for job_id in ids:
        record = await server.wait_finished(job_id)
        assert record["success"] == "true"
    await with_timeout(reader.ended, 120)
    result = json.loads(reader.output.decode().strip().splitlines()[-1])
    assert result["close"] is None, result
    assert result["finished"] == sorted(ids)
    assert result["bytes"] > 6 * 8_000_000


class _Wire:
    """Stands in for the protocol under an outbox: what was written, and whether it gave up."""

    def __init__(self) -> None:
        self.written = 0
        self.gave_up: list[str] = []
        self.outbox: Any = None
        #: Frames the transport takes before it is full (None: any number).
        self.room: int | None = None

    def write_out(self, frame: bytes) -> None:
        self.written += len(frame)
        if self.room is not None:
            self.room -= 1
            if self.room <= 0:
                self.outbox.pauseProducing()

    def too_slow(self, why: str) -> None:
        self.gave_up.append(why)


def test_outbox_judges_slowness_over_time() -> None:
    from sysadm_dispatch.transports.outbox import Outbox

    clock, wire = Clock(), _Wire()
    outbox = wire.outbox = Outbox(wire, 1000, 5.0, clock)  # type: ignore[arg-type]
    # One burst far over the limit, drained within the grace: kept.
    outbox.pauseProducing()
    outbox.send(b"x" * 10_000)
    clock.advance(4.9)
    outbox.resumeProducing()
    assert wire.written == 10_000 and not wire.gave_up
    clock.advance(10)
    assert not wire.gave_up
    # Over the limit and staying there (drained only a little): dropped after the grace.
    outbox.pauseProducing()
    for _ in range(3):
        outbox.send(b"y" * 800)
    wire.room = 1
    outbox.resumeProducing()  # takes one frame, then the transport is full again
    assert outbox.size == 1600
    clock.advance(4.9)
    assert not wire.gave_up
    outbox.send(b"z" * 100)
    clock.advance(0.2)
    assert wire.gave_up and "for 5 s" in wire.gave_up[0]


def test_outbox_drops_a_stalled_client_past_the_hard_bound() -> None:
    from sysadm_dispatch.transports.outbox import HARD_BACKLOG_FACTOR, Outbox

    clock, wire = Clock(), _Wire()
    outbox = Outbox(wire, 1000, 5.0, clock)  # type: ignore[arg-type]
    outbox.pauseProducing()
    outbox.send(b"x" * (1000 * HARD_BACKLOG_FACTOR + 1))  # one huge burst: not judged yet
    assert not wire.gave_up
    clock.advance(1.0)
    outbox.send(b"x")  # more, and nothing taken for a second
    assert wire.gave_up and "nothing taken" in wire.gave_up[0]
