"""The bare servers the benchmarks compare sysadm-dispatch with.

Each does the least its framework allows: no auth, no dispatcher, no access
log.  They answer with a body of the same bytes as ours, so the difference
measured is our own code, not the payload.  The bench scripts start them;
by hand::

    python bench/bare_servers.py klein --port 8080 --body '{"args": {"jobs": {}}}'
    python bench/bare_servers.py autobahn --port 8081 \\
        --prefix '{"namespace": "rpc", "name": "response", "id": ' --suffix ', "args": {"jobs": {}}}'
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.web import http
from twisted.web.server import Request, Site

HOST = "127.0.0.1"


class QuietSite(Site):
    """A Site that writes no access log line (our cost to measure, not the bare one's)."""

    def log(self, request: http.Request) -> None:
        pass


def klein_site(body: bytes) -> Site:
    class BareRest:
        app = Klein()

        @app.route("/rpc/dispatcher", methods=["PUT", "POST"])
        def dispatcher(self, request: Request) -> bytes:
            if request.content is not None:
                request.content.read()
            request.setHeader(b"Content-Type", b"application/json")
            return body

    return QuietSite(BareRest().app.resource())


def autobahn_factory(prefix: str, suffix: str) -> WebSocketServerFactory:
    class BareWebSocket(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            # Echo the id in the same encoding as ours, so each reply has our length.
            request_id = json.loads(payload).get("id", "")
            reply = prefix + json.dumps(request_id) + suffix
            self.sendMessage(reply.encode(), isBinary=False)

    factory = WebSocketServerFactory()
    factory.protocol = BareWebSocket
    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["klein", "autobahn"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", help="klein: the exact reply body")
    parser.add_argument("--prefix", help="autobahn: reply text before the JSON-encoded id")
    parser.add_argument("--suffix", help="autobahn: reply text after the JSON-encoded id")
    args = parser.parse_args()
    factory: Site | WebSocketServerFactory
    if args.kind == "klein":
        if args.body is None:
            parser.error("klein needs --body")
        factory = klein_site(args.body.encode())
    else:
        if args.prefix is None or args.suffix is None:
            parser.error("autobahn needs --prefix and --suffix")
        factory = autobahn_factory(args.prefix, args.suffix)
    react(serve, [factory, args.port])


def serve(reactor: Any, factory: Site | WebSocketServerFactory, port: int) -> Deferred[None]:
    """Listen, then serve until a signal stops the reactor (the default reactor, as under twistd)."""
    reactor.listenTCP(port, factory, interface=HOST)
    return Deferred()


if __name__ == "__main__":
    main()
