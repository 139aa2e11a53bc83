"""The server store_rate.py measures: the dispatcher behind WebSocket, embedded.

The same code as ``twistd sysadm-dispatch`` (Dispatcher, Router, WebSocket
factory) with its job store in a file (durable acceptance), in memory (the
same code path, no disk), or none (nothing recorded).  Jobs go to a queue
``hold`` whose one slot a long job takes, so ``run`` requests queue jobs
without spawning processes: what is measured is accepting them.

    python bench/_store_server.py {file,memory,none} PORT STATE_DIR USERS_FILE
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react

from sysadm_dispatch import Dispatcher, Store, make_router, make_websocket_factory


async def main(reactor: Any, mode: str, port: str, state_dir: str, users: str) -> None:
    store = None
    if mode == "file":
        store = Store(os.path.join(state_dir, "dispatch.sqlite3"), reactor)
    elif mode == "memory":
        store = Store(":memory:", reactor)
    dispatcher = Dispatcher(reactor, queues={"hold": 1}, store=store, max_pending=10**8)
    dispatcher.startService()
    reactor.addSystemEventTrigger("before", "shutdown", dispatcher.stopService)
    router = make_router(dispatcher, users)
    await serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(make_websocket_factory(router))
    dispatcher.run("blocker", "sleep 3600", queue="hold").addErrback(lambda _: None)
    await Deferred()  # until SIGTERM


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, *sys.argv[1:5])))
