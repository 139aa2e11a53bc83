"""What one event costs per subscriber, sent the two ways Autobahn allows.

1,000 server connections, each opened by a real handshake over a
``StringTransport`` (no sockets: only the sending code is measured); a
turn of ``--batch`` events of about 400 bytes is prepared once with
``prepareMessage`` and then sent to every connection either

- with ``sendPreparedMessage``, once per event and connection, or
- as one ``transport.write`` of the turn's prepared frames per connection,
  as the WebSocket transport sends a batch of events.

Prints one JSON line: microseconds per event per subscriber, the median of
``--repeat`` rounds, for each way.  See docs/benchmarks.rst.

    python bench/prepared_send.py [--connections 1000] [--batch 16] [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport

HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def open_connections(factory: WebSocketServerFactory, count: int) -> list[WebSocketServerProtocol]:
    connections = []
    for _ in range(count):
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(HANDSHAKE)
        if protocol.state != protocol.STATE_OPEN:
            raise SystemExit("the handshake did not complete")
        connections.append(protocol)
    return connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=9)
    options = parser.parse_args()
    factory = WebSocketServerFactory("ws://127.0.0.1:1")
    factory.protocol = WebSocketServerProtocol
    connections = open_connections(factory, options.connections)
    events = [json.dumps({"namespace": "events", "name": "dispatcher", "id": "",
                          "args": {"job_id": f"job-{i}", "state": "running", "output": "x" * 300}}).encode()
              for i in range(options.batch)]

    def per_event() -> None:
        prepared = [factory.prepareMessage(event, doNotCompress=True) for event in events]
        for protocol in connections:
            for message in prepared:
                protocol.sendPreparedMessage(message)

    def one_write() -> None:
        frames = b"".join(factory.prepareMessage(event, doNotCompress=True).payloadHybi for event in events)
        for protocol in connections:
            protocol.transport.write(frames)  # type: ignore[union-attr]

    ways: dict[str, Callable[[], None]] = {"send_prepared_message_per_event": per_event,
                                           "one_write_per_turn": one_write}
    result: dict[str, float] = {}
    for name, send in ways.items():
        times = []
        for _ in range(options.repeat):
            for protocol in connections:
                protocol.transport.clear()  # type: ignore[union-attr]
            started = time.perf_counter()
            send()
            times.append(time.perf_counter() - started)
        sizes = {len(protocol.transport.value()) for protocol in connections}  # type: ignore[union-attr]
        if len(sizes) != 1:
            raise SystemExit("the connections did not all receive the same bytes")
        result[f"{name}_us"] = round(statistics.median(times) / (options.batch * options.connections) * 1e6, 3)
    result["ratio"] = round(result["send_prepared_message_per_event_us"] / result["one_write_per_turn_us"], 1)
    print(json.dumps({"bench": "prepared_send", "connections": options.connections, "batch": options.batch,
                      "repeat": options.repeat, **result}))


if __name__ == "__main__":
    main()
