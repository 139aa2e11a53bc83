"""
The WebSocket transport in memory: a real Autobahn client talks to the
server's protocol through ``autobahn.twisted.testing``'s memory agent on a
``MemoryReactorClock``, with no socket and no wall time.  The server's
router runs on a ``SyncClock`` (password checks finish at once), which also
drives its timers and the event hub's turns.

These tests also pin what the transport relies on in Autobahn beyond its
message API (see transports/bounded.py and ``write_out`` in websocket.py):
the frame-level hooks that bound a message while it arrives, frames made
by ``prepareMessage`` going out as they are (no compression is ever
accepted), and ``sendCloseFrame`` carrying the standard's 1008.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.testing import create_memory_agent
from autobahn.twisted.websocket import WebSocketClientProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer
from autobahn.websocket.protocol import WebSocketProtocol
from security_helpers import SyncClock, alice_and_bob
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from sysadm_dispatch.api.router import Router
from sysadm_dispatch.auth.login import Authenticator
from sysadm_dispatch.core.dispatcher import Dispatcher
from sysadm_dispatch.transports.websocket import DispatchServerFactory, make_websocket_factory, text_frame


class Pumps:
    """The memory agent's pumper, driven by the test: ``flush`` moves every byte that waits, both ways."""

    def __init__(self) -> None:
        self.pumps: list[iosim.IOPump] = []

    def add(self, pump: iosim.IOPump) -> None:
        self.pumps.append(pump)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


class Client(WebSocketClientProtocol):
    """Records what the server sends, and how it closes."""

    offer_compression = False

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []
        self.closed: tuple[int | None, str | None] | None = None

    def connectionMade(self) -> None:
        if self.offer_compression:
            self.factory.setProtocolOptions(perMessageCompressionOffers=[PerMessageDeflateOffer()])
        super().connectionMade()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (code, reason)

    def call(self, name: str, args: Any = None, *, namespace: str = "rpc", id: str = "") -> None:
        message = {"namespace": namespace, "name": name, "id": id or name, "args": args}
        self.sendMessage(json.dumps(message).encode())


class CompressingClient(Client):
    offer_compression = True


class MemoryWebSocketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = SyncClock()
        checker = alice_and_bob(self, self.clock)
        self.dispatcher = Dispatcher(self.clock, environ={})
        self.router = Router(self.dispatcher, Authenticator(self.clock, checker, token_ttl=900),
                             max_message_bytes=4096)
        self.factory: DispatchServerFactory = make_websocket_factory(self.router)
        self.factory.guard_connections(idle_timeout=600, auth_timeout=30, max_unauthenticated_bytes=1024)
        self.pumps = Pumps()
        self.agent = create_memory_agent(MemoryReactorClock(), self.pumps, lambda: self.factory.buildProtocol(None))

    def connect(self, client_class: type[Client] = Client) -> Client:
        opened = self.agent.open("ws://127.0.0.1:8080/", {}, protocol_class=client_class)
        self.pumps.flush()
        client: Client = self.successResultOf(opened)
        return client

    def exchange(self, client: Client) -> list[dict[str, Any]]:
        """Let the server answer (and the hub's turn pass); what the client received since the last time."""
        self.pumps.flush()
        self.clock.advance(0)
        self.pumps.flush()
        received, client.received = client.received, []
        return received

    def login(self, client: Client, user: str = "alice") -> None:
        client.call("auth", {"username": user, "password": {"alice": "pw-a", "bob": "pw-b"}[user]})
        [reply] = self.exchange(client)
        self.assertEqual(reply["name"], "response", reply)

    def test_login_and_a_call(self) -> None:
        client = self.connect()
        self.login(client)
        client.call("dispatcher", {"action": "list"}, id="l1")
        self.assertEqual(self.exchange(client),
                         [{"namespace": "rpc", "name": "response", "id": "l1", "args": {"jobs": {}}}])

    def test_replies_leave_in_the_order_of_their_requests(self) -> None:
        client = self.connect()
        client.call("auth", {"username": "bob", "password": "pw-b"}, id="a")
        client.call("query", id="q")  # waits for the login, and runs as its user
        client.call("identify", id="i")
        replies = self.exchange(client)
        self.assertEqual([(r["id"], r["name"]) for r in replies], [("a", "response"), ("q", "response"),
                                                                   ("i", "response")])
        self.assertEqual(replies[1]["args"], {"rpc/dispatcher": "read", "rpc/logs": "read"})

    def test_error_replies(self) -> None:
        client = self.connect()
        client.call("dispatcher", {"action": "list"}, id="d")
        [refused] = self.exchange(client)
        self.assertEqual((refused["id"], refused["name"], refused["args"]["code"]), ("d", "error", 401))
        self.login(client, "bob")
        client.call("nope", id="n")
        client.call("dispatcher", {"action": "run", "jobs": []}, id="r")
        codes = [(r["id"], r["name"], r["args"]["code"]) for r in self.exchange(client)]
        self.assertEqual(codes, [("n", "error", 404), ("r", "error", 403)])

    def test_an_oversized_message_is_refused_and_the_connection_goes_on(self) -> None:
        client = self.connect()
        client.call("identify", "x" * 2000, id="big")
        client.call("identify", id="small")
        big, small = self.exchange(client)
        self.assertEqual((big["id"], big["args"]["code"]), ("", 413))
        self.assertIn("before login", big["args"]["detail"])
        self.assertEqual((small["id"], small["name"]), ("small", "response"))
        self.assertIsNone(client.closed)

    def test_a_subscribed_event_is_delivered(self) -> None:
        client = self.connect()
        self.login(client)
        client.call("subscribe", "dispatcher", namespace="events", id="s")
        self.assertEqual(self.exchange(client),
                         [{"namespace": "events", "name": "response", "id": "s", "args": {"subscribe": "dispatcher"}}])
        event = self.dispatcher.events.publish("dispatcher", {"job_id": "j1", "state": "running"})
        self.assertEqual(self.exchange(client), [json.loads(event.frame)])
        client.call("unsubscribe", "dispatcher", namespace="events", id="u")
        self.exchange(client)
        self.dispatcher.events.publish("dispatcher", {"job_id": "j1", "state": "finished"})
        self.assertEqual(self.exchange(client), [])

    def test_an_event_is_prepared_once_for_every_subscriber(self) -> None:
        clients = [self.connect() for _ in range(3)]
        for client in clients:
            self.login(client)
            client.call("subscribe", "dispatcher", namespace="events")
            self.exchange(client)
        event = self.dispatcher.events.publish("dispatcher", {"job_id": "j2"})
        self.clock.advance(0)
        self.assertEqual(event.cache["websocket"], text_frame(event.frame))
        for client in clients:
            self.assertEqual(self.exchange(client), [json.loads(event.frame)])

    def test_unauthenticated_connection_closed_with_policy_violation(self) -> None:
        client = self.connect()
        self.clock.advance(30)
        self.pumps.flush()
        self.assertEqual(client.closed, (WebSocketProtocol.CLOSE_STATUS_CODE_POLICY_VIOLATION,
                                         "not authenticated within 30 seconds"))
        self.assertEqual(self.factory.dropped["auth_timeout"], 1)

    def test_idle_connection_closed_normally(self) -> None:
        client = self.connect()
        self.login(client)
        self.clock.advance(600)
        self.pumps.flush()
        self.assertEqual(client.closed, (WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL, "idle: no message for 600 seconds"))
        self.assertEqual(self.factory.dropped["idle"], 1)

    def test_compression_is_never_accepted(self) -> None:
        # Frames are prepared once and written as they are: that holds only
        # while no connection compresses.
        client = self.connect(CompressingClient)
        self.assertEqual(client.websocket_extensions_in_use, [])
        self.login(client)
        client.call("identify", id="i")
        [reply] = self.exchange(client)
        self.assertEqual(reply["id"], "i")

    def test_prepared_frames_are_rfc6455_text_frames(self) -> None:
        prepared = self.factory.prepareMessage(b"hi", doNotCompress=True).payloadHybi
        self.assertEqual(prepared, b"\x81\x02hi")
        self.assertEqual(text_frame(b"x" * 126)[:4], b"\x81\x7e\x00\x7e")
