"""The bare broadcast server ``events_fanout.py`` compares our events with.

An Autobahn server on the same Twisted reactor that speaks just enough of our
envelope for the benchmark client to drive it as it drives sysadm-dispatch:
every request gets a ``response`` with its id; nothing is checked (no users,
no dispatcher, no log).  Requests it acts on:

``events/subscribe``
    adds the connection to the subscribers.
``bench/load`` (args: a list of message texts)
    keeps these messages for the next broadcast.
``bench/broadcast``
    sends the kept messages to every subscriber, ``--batch`` messages per
    turn of the reactor, as ours sends a turn's events: each message framed
    once (``prepareMessage``), and a turn's frames joined and written to
    each subscriber in one write.
``bench/stream`` (args: ``{"id": ..., "argv": [...], "command": ...}``)
    runs the program and sends each piece of output to every subscriber at
    once (framed once, written straight to each connection), as a ``running`` event carrying that piece as our events carry
    output (under ``process_details[command]``), and a ``finished`` event
    with the whole log at the end: the same path from a job's output to its
    subscribers, without coalescing.
``rpc/auth`` answers a dummy token and ``events/subscribe`` what ours answers.

By hand::

    python bench/bare_broadcast.py --port 8082
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import react
from twisted.python.failure import Failure

HOST = "127.0.0.1"


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


class BroadcastFactory(WebSocketServerFactory):
    def __init__(self, reactor: Any, batch: int) -> None:
        super().__init__()
        self.reactor = reactor
        self.batch = batch
        self.subscribers: dict[int, BroadcastProtocol] = {}
        self.messages: list[bytes] = []
        self.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)

    def broadcast(self, *payloads: bytes) -> None:
        frames = b"".join(self.prepareMessage(payload).payloadHybi for payload in payloads)
        for subscriber in list(self.subscribers.values()):
            transport: Any = subscriber.transport
            transport.write(frames)

    def broadcast_kept(self, start: int = 0) -> None:
        end = min(start + self.batch, len(self.messages))
        self.broadcast(*self.messages[start:end])
        if end < len(self.messages):
            self.reactor.callLater(0, self.broadcast_kept, end)

    def stream(self, job_id: str, argv: list[str], command: str) -> None:
        self.reactor.spawnProcess(
            _Streamer(self, job_id, command), argv[0], argv, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"}
        )


class _Streamer(ProcessProtocol):
    def __init__(self, factory: BroadcastFactory, job_id: str, command: str) -> None:
        self.factory = factory
        self.job_id = job_id
        self.command = command
        self.log: list[str] = []

    def _event(self, state: str, text: str) -> bytes:
        details = {"process_id": self.job_id, "state": state, self.command: text}
        args = {"state": state, "process_id": self.job_id, "process_details": details}
        return _encode({"namespace": "events", "name": "dispatcher", "id": "", "args": args})

    def outReceived(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        self.log.append(text)
        self.factory.broadcast(self._event("running", text))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.factory.broadcast(self._event("finished", "".join(self.log)))


class BroadcastProtocol(WebSocketServerProtocol):
    factory: BroadcastFactory

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        request = json.loads(payload)
        namespace, name, args = request.get("namespace"), request.get("name"), request.get("args")
        factory = self.factory
        after = None
        result: Any = {}
        if (namespace, name) == ("rpc", "auth"):
            result = ["bare-token", 900]
        elif (namespace, name) == ("events", "subscribe"):
            factory.subscribers[id(self)] = self
            result = {"subscribe": "dispatcher"}
        elif (namespace, name) == ("bench", "load"):
            factory.messages = [text.encode() for text in args]
        elif (namespace, name) == ("bench", "broadcast"):
            after = factory.broadcast_kept
        elif (namespace, name) == ("bench", "stream"):
            factory.stream(args["id"], args["argv"], args["command"])
        reply = {"namespace": namespace or "rpc", "name": "response", "id": request.get("id", ""), "args": result}
        self.sendMessage(_encode(reply))
        if after is not None:
            after()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.subscribers.pop(id(self), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batch", type=int, default=16, help="messages broadcast per reactor turn (default 16)")
    args = parser.parse_args()
    react(serve, [args.port, args.batch])


def serve(reactor: Any, port: int, batch: int) -> Deferred[None]:
    """Listen, then serve until a signal stops the reactor (the default reactor, as under twistd)."""
    factory = BroadcastFactory(reactor, batch)
    factory.protocol = BroadcastProtocol
    reactor.listenTCP(port, factory, interface=HOST)
    return Deferred()


if __name__ == "__main__":
    main()
