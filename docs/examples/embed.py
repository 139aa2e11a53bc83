"""
Embedding sysadm-dispatch in a plain Twisted program, without twistd.

Runs a job from Python and prints its finished record, then goes on serving
the REST and WebSocket APIs on the ports it printed (free ones) until it is
interrupted (Ctrl-C or SIGTERM): running jobs are killed before it exits.

    python embed.py USERS_FILE
"""

import json
import sys

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react
from twisted.web.server import Site

from sysadm_dispatch import Dispatcher, make_rest_resource, make_router, make_websocket_factory


async def main(reactor, users_file):
    dispatcher = Dispatcher(reactor, queues={"backup_queue": 1})
    dispatcher.startService()
    # On Ctrl-C or SIGTERM: kill running jobs, and wait for them, before exiting.
    reactor.addSystemEventTrigger("before", "shutdown", dispatcher.stopService)
    router = make_router(dispatcher, users_file)  # one router: both transports share tokens
    rest = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(make_rest_resource(router)))
    ws = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(make_websocket_factory(router))
    print("listening", rest.getHost().port, ws.getHost().port, flush=True)

    # Hear about every job, as WebSocket subscribers do.
    dispatcher.events.subscribe("dispatcher", lambda event: print("event", event.args["state"], flush=True))

    record = await dispatcher.run("hello-1", ["echo hello", "echo world"], queue="backup_queue")
    print("record", json.dumps(record), flush=True)

    await Deferred()  # serve clients until interrupted


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1])))
