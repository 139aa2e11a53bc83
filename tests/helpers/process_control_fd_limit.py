"""
A dispatcher in a process whose file descriptors are all taken: the job
started then must fail alone, with a reason, and the next one (once
descriptors are free again) must run.  Prints one JSON line with both
finished records and the events of the first job.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import ensureDeferred

from sysadm_dispatch import Dispatcher
from sysadm_dispatch.process.procs import ProcessTracker


async def main(reactor: Any) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    spawner = sys.argv[1] if len(sys.argv) > 1 else "fast"
    dispatcher = Dispatcher(reactor, processes=ProcessTracker(reactor, spawner=spawner))
    dispatcher.startService()
    events: list[str] = []
    dispatcher.events.subscribe(
        "dispatcher", lambda e: events.append(e.args["state"]) if e.args["process_id"] == "starved" else None
    )
    fillers = []
    try:
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        pass
    try:
        starved = await dispatcher.run("starved", "echo starved")
    finally:
        for fd in fillers:
            os.close(fd)
    after = await dispatcher.run("after", "echo after")
    await dispatcher.stopService()
    print(json.dumps({"starved": starved, "after": after, "events": events, "fillers": len(fillers)}))


task.react(lambda reactor: ensureDeferred(main(reactor)))
