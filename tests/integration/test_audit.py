"""
Who did what: ``submitted_by`` and ``killed_by`` in a job's events, list
entries and history (kept in the store, whose schema gained them in
version 2, migrated from version 1 in place), the kill log line naming
the user, and refused (403) requests logged with user, address and request.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest_twisted
from conftest import Server, with_timeout
from security_helpers import captured_log
from twisted.internet import reactor
from twisted.logger import formatEvent

from sysadm_dispatch import Dispatcher, Store
from sysadm_dispatch.store.migrations import MIGRATIONS, SCHEMA_VERSION, migrate
from sysadm_dispatch.store.records import spec_to_json

ensure = pytest_twisted.ensureDeferred


async def history(server: Server, job_id: str) -> dict[str, Any]:
    status, body, _ = await server.rest({"action": "job", "job_id": job_id}, path="/rpc/logs")
    assert status == 200, body
    return dict(body["args"])


@ensure
async def test_submitted_by_and_killed_by_in_events_list_and_history(server: Server, tmp_path: Any) -> None:
    server.add_user("bob", "full", "bob-password-1")
    bob = await server.ws(("bob", "bob-password-1"))
    await bob.call("subscribe", ["dispatcher"], namespace="events")
    reply = await bob.call("dispatcher", {"action": "run", "jobs": [
        {"id": "fine", "commands": "true"},
        {"id": "long", "commands": "sleep 30"},
        {"id": "wait", "commands": "sleep 30", "queue": "pkg_queue"},
        {"id": "queued", "commands": "true", "queue": "pkg_queue"},
        {"id": "slow", "commands": "sleep 30", "timeout": 0.2}]})
    assert reply["name"] == "response", reply
    status, listed, _ = await server.rest({"action": "list"})
    assert listed["args"]["jobs"]["no_queue"]["long"]["submitted_by"] == "bob", listed
    # admin (over REST) kills two of bob's jobs, one running and one pending.
    with captured_log() as events:
        status, body, _ = await server.rest({"action": "kill", "job_id": ["long", "queued"]})
    assert status == 200, body
    lines = [formatEvent(e) for e in events]
    assert any("long" in line and "killed while running by admin" in line for line in lines), lines
    assert any("queued" in line and "killed while pending by admin" in line for line in lines), lines

    records = {job_id: await server.wait_finished(job_id) for job_id in ("fine", "long", "queued", "slow")}
    assert {job_id: (r["submitted_by"], r["killed_by"]) for job_id, r in records.items()} == {
        "fine": ("bob", None), "long": ("bob", "admin"), "queued": ("bob", "admin"), "slow": ("bob", "timeout")}
    for job_id, record in records.items():
        kept = await history(server, job_id)
        assert (kept["submitted_by"], kept["killed_by"]) == (record["submitted_by"], record["killed_by"]), kept
    # Every event of the job names who submitted it.
    seen: list[dict[str, Any]] = []
    while not any(e["process_id"] == "long" and e["state"] == "finished" for e in seen):
        seen.append((await bob.next_event())["args"])
    assert all(e["submitted_by"] == "bob" for e in seen), seen
    assert [e["killed_by"] for e in seen if e["process_id"] == "long"][-1] == "admin"
    # A stop ends the rest: their records say so.
    await server.stop()
    store = server.dispatcher.store
    conn = sqlite3.connect(store.path)
    rows = dict(conn.execute("SELECT job_id, killed_by FROM history").fetchall())
    conn.close()
    assert rows["wait"] == "shutdown" and rows["long"] == "admin" and rows["fine"] is None, rows


@ensure
async def test_refused_requests_are_logged_with_user_address_and_request(server: Server) -> None:
    server.add_user("reader", "read", "reader-password-1")
    with captured_log() as events:
        status, body, _ = await server.rest({"action": "run", "oops": "rm -rf /tmp/nothing"},
                                            auth=("reader", "reader-password-1"))
        assert status == 403, body
        client = await server.ws(("reader", "reader-password-1"))
        reply = await client.call("dispatcher", {"action": "kill", "job_id": "someone-elses"})
        assert reply["args"]["code"] == 403, reply
    lines = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
    assert len(lines) == 2, lines
    assert "reader" in lines[0] and "127.0.0.1" in lines[0] and "run jobs" in lines[0] and "oops" in lines[0], lines
    assert "reader" in lines[1] and "kill jobs" in lines[1] and "someone-elses" in lines[1], lines


@ensure
async def test_a_version_1_store_is_migrated_and_its_jobs_and_history_kept(tmp_path: Any) -> None:
    path = str(tmp_path / "old.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:1]) == 1
    from sysadm_dispatch.core.spec import specs_from_run_args

    [old] = specs_from_run_args({"jobs": [{"id": "old-pending", "commands": "true"}]}, ["no_queue"])
    conn.execute("INSERT INTO active_jobs (job_id, spec, time_queued, time_started) VALUES (?, ?, 1.0, NULL)",
                 ("old-pending", spec_to_json(old)))
    old_record = {"state": "finished", "process_id": "old-done", "process_details": {"process_id": "old-done"}}
    conn.execute("INSERT INTO history (job_id, time_finished, record) VALUES ('old-done', ?, ?)",
                 (reactor.seconds() - 10, json.dumps(old_record)))
    conn.close()

    store = Store(path, reactor)
    dispatcher = Dispatcher(reactor, store=store)
    dispatcher.startService()
    await with_timeout(dispatcher.when_recovered())
    try:
        assert await with_timeout(dispatcher.last_record("old-done")) == old_record
        record = await with_timeout(dispatcher.finished("old-pending")) if "old-pending" in dispatcher.jobs else None
        if record is None:
            record = await with_timeout(dispatcher.last_record("old-pending"))
        assert record["success"] == "true" and record["submitted_by"] is None, record
        done = await with_timeout(dispatcher.run("new", "true", submitted_by="carol"))
        assert done["submitted_by"] == "carol"
    finally:
        await with_timeout(dispatcher.stopService())
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    rows = conn.execute("SELECT job_id, submitted_by, killed_by FROM history ORDER BY seq").fetchall()
    conn.close()
    assert rows == [("old-done", None, None), ("old-pending", None, None), ("new", "carol", None)], rows
