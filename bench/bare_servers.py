"""The bare servers the benchmarks compare sysadm-dispatch with.

Each does the least its framework allows: no auth, no dispatcher, no access
log.  The WebSocket ones send as ours does, by the cheapest path Autobahn
offers: each message framed once (``prepareMessage``) and the frame written
straight to the connection, without ``sendMessage``'s per-message work.  They answer with a body of the same bytes as ours, so the difference
measured is our own code, not the payload.  The bench scripts start them;
by hand::

    python bench/bare_servers.py klein --port 8080 --body '{"args": {"jobs": {}}}'
    python bench/bare_servers.py autobahn --port 8081 \\
        --prefix '{"namespace": "rpc", "name": "response", "id": ' --suffix ', "args": {"jobs": {}}}'
    python bench/bare_servers.py jobs --port 8082

``jobs`` is the floor of a job server on the same stack: for each ``run``
request of one job it answers, starts the command with ``os.posix_spawn``
(stdout and stderr to a pipe, in its own process group), watches its exit
through a pidfd and its output until the pipe closes, and then sends one
``finished`` event.  No login, no store, no log, no other events.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.web import http
from twisted.web.server import Request, Site

HOST = "127.0.0.1"


def send(protocol: WebSocketServerProtocol, payload: bytes) -> None:
    """A text message framed by Autobahn, written to the connection as it is (as ours writes its frames)."""
    frame = protocol.factory.prepareMessage(payload).payloadHybi
    transport: Any = protocol.transport
    transport.write(frame)


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
            send(self, reply.encode())

    factory = WebSocketServerFactory()
    factory.protocol = BareWebSocket
    return factory


class _Descriptor:
    """An fd the reactor watches for reading (the least IReadDescriptor)."""

    def __init__(self, fd: int, on_read: Any) -> None:
        self.fd = fd
        self.on_read = on_read

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.on_read()

    def connectionLost(self, reason: object) -> None:
        # The reactor saw a hang-up (a closed pipe, an exited process) and
        # stopped watching: one last read finds the end.
        self.on_read()

    def logPrefix(self) -> str:
        return "bare-job"


class _BareJob:
    """One command: spawned, its pipe read to the end, its exit reaped, then reported."""

    def __init__(self, reactor: Any, protocol: WebSocketServerProtocol, job_id: str, argv: list[str]) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.job_id = job_id
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            self.pid: int = os.posix_spawn(
                argv[0], argv, os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, write_fd, 1), (os.POSIX_SPAWN_DUP2, write_fd, 2)],
                setpgroup=0, setsigdef=(signal.SIGPIPE,),
            )
        finally:
            os.close(write_fd)
        self.status: int | None = None
        self.pipe: _Descriptor | None = _Descriptor(read_fd, self.read_pipe)
        self.exit: _Descriptor | None = _Descriptor(os.pidfd_open(self.pid), self.reap)
        reactor.addReader(self.pipe)
        reactor.addReader(self.exit)

    def read_pipe(self) -> None:
        assert self.pipe is not None
        try:
            if os.read(self.pipe.fd, 65536):
                return
        except BlockingIOError:
            return
        self.reactor.removeReader(self.pipe)
        os.close(self.pipe.fd)
        self.pipe = None
        self.done()

    def reap(self) -> None:
        assert self.exit is not None
        self.status = os.waitpid(self.pid, 0)[1]
        self.reactor.removeReader(self.exit)
        os.close(self.exit.fd)
        self.exit = None
        self.done()

    def done(self) -> None:
        if self.pipe is not None or self.exit is not None:
            return
        success = "true" if self.status == 0 else "false"
        event = {"namespace": "events", "name": "dispatcher",
                 "args": {"process_id": self.job_id, "state": "finished", "success": success}}
        send(self.protocol, json.dumps(event).encode())


def jobs_factory(reactor: Any) -> WebSocketServerFactory:
    class BareJobs(WebSocketServerProtocol):
        def connectionMade(self) -> None:
            # As ours does: an event written after a reply must not wait for a delayed ACK.
            transport: Any = self.transport
            transport.setTcpNoDelay(True)
            super().connectionMade()

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            request = json.loads(payload)
            [job] = request["args"]["jobs"]
            send(self, json.dumps({"namespace": "rpc", "name": "response", "id": request["id"],
                                   "args": {"jobs": {}}}).encode())
            _BareJob(reactor, self, job["id"], shlex.split(job["commands"]))

    factory = WebSocketServerFactory()
    factory.protocol = BareJobs
    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["klein", "autobahn", "jobs"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", help="klein: the exact reply body")
    parser.add_argument("--prefix", help="autobahn: reply text before the JSON-encoded id")
    parser.add_argument("--suffix", help="autobahn: reply text after the JSON-encoded id")
    args = parser.parse_args()
    factory: Site | WebSocketServerFactory
    if args.kind == "jobs":
        from twisted.internet import reactor

        factory = jobs_factory(reactor)
    elif args.kind == "klein":
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
