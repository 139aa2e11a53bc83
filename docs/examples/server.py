"""
The whole sysadm-dispatch server in a plain Twisted program, without twistd:
REST (with the dashboard), WebSocket, the job store and every timer, as one
service built by ``make_server``.

Prints the REST and WebSocket ports (free ones), then serves until it is
interrupted (Ctrl-C or SIGTERM): the listeners close, running jobs are
killed and the store is closed before it exits.  On first run the state
directory gets a users file with ``admin``, whose password is in
``STATE_DIR/admin-password``.

    python server.py STATE_DIR
"""

import sys

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react

from sysadm_dispatch import make_server


async def main(reactor, state_dir):
    application = MultiService()  # the program's own services would go here too
    server = make_server(reactor, state_dir=state_dir, queues={"backup_queue": 1},
                         rest="tcp:0:interface=127.0.0.1", ws="tcp:0:interface=127.0.0.1")
    server.setServiceParent(application)
    application.privilegedStartService()
    application.startService()
    # On Ctrl-C or SIGTERM: stop everything, and wait for it, before exiting.
    reactor.addSystemEventTrigger("before", "shutdown", application.stopService)
    rest = await server.listener("rest").when_listening()
    ws = await server.listener("ws").when_listening()
    print("listening", rest.getHost().port, ws.getHost().port, flush=True)
    await Deferred()  # serve clients until interrupted


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1])))
