"""The embedding API, used by a plain Twisted program without twistd."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest_twisted
from conftest import PYTHON, REPO, python_env, with_timeout
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred

from sysadm_dispatch import Dispatcher, InvalidJob, make_rest_resource, make_router, make_websocket_factory
from sysadm_dispatch.auth import FULL, UserEntry, hash_password, write_users

EXAMPLE = os.path.join(REPO, "docs", "examples", "embed.py")


def test_documented_example_runs(tmp_path: Any) -> None:
    users = tmp_path / "users"
    write_users(str(users), {"me": UserEntry("me", FULL, hash_password("pw"))})
    out = subprocess.run([PYTHON, EXAMPLE, str(users)], env=python_env(), capture_output=True, text=True,
                         timeout=60, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("listening ")
    events = [line for line in lines if line.startswith("event")]
    # Output may go out in running updates of its own before the end (a job's first at once).
    assert events[:2] == ["event pending", "event running"] and events[-1] == "event finished", events
    assert set(events[2:-1]) <= {"event running"}, events
    record = json.loads(next(line for line in lines if line.startswith("record "))[len("record "):])
    assert record["success"] == "true"
    assert record["queue"] == "backup_queue"
    assert record["process_details"]["echo world"] == "world\n"


@pytest_twisted.ensureDeferred
async def test_embedded_dispatcher_in_this_reactor(tmp_path: Any) -> None:
    users = tmp_path / "users"
    write_users(str(users), {"me": UserEntry("me", FULL, hash_password("pw"))})
    dispatcher = Dispatcher(reactor)
    dispatcher.startService()
    router = make_router(dispatcher, str(users))
    assert make_rest_resource(router) is not None
    assert make_websocket_factory(router).router is router
    try:
        dispatcher.run("bad", [])
    except InvalidJob as e:
        assert "'bad'" in str(e)
    else:
        raise AssertionError("an empty chain was accepted")
    record = await with_timeout(dispatcher.run(None, "sh -c 'exit 4'"))
    assert record["success"] == "false"
    assert record["process_details"]["return_codes/sh -c 'exit 4'"] == "4"
    await with_timeout(ensureDeferred(_stop(dispatcher)))


async def _stop(dispatcher: Dispatcher) -> None:
    await dispatcher.stopService()
