"""
The handler table: adding an action is one ``register`` call, and the new
action is then reachable through both transports' shapes of dispatch (a
WebSocket message to ``Router.handle_bytes``; a REST ``PUT``, in memory
with ``treq.testing.StubTreq``), listed by ``rpc/query`` and guarded by the
role it registered with.  Also the table's own rules: one handler per key,
handlers return Deferreds, anything but ``RPCError`` is a 500.
"""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

from autobahn.wamp.exception import ApplicationError
from security_helpers import SyncClock, alice_and_bob
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from sysadm_dispatch.api.envelope import RPCError
from sysadm_dispatch.api.handlers import standard_table
from sysadm_dispatch.api.router import PUBLIC, Router, Session
from sysadm_dispatch.api.table import Call, HandlerTable, Role
from sysadm_dispatch.auth.login import Authenticator
from sysadm_dispatch.core.dispatcher import Dispatcher
from sysadm_dispatch.transports.rest import RestAPI
from sysadm_dispatch.transports.wamp import WampHost

PASSWORDS = {"alice": "pw-a", "bob": "pw-b"}


def ping(call: Call) -> Deferred[Any]:
    return succeed({"pong": call.args, "user": call.session.user.name if call.session.user else None})


def reset(call: Call) -> Deferred[Any]:
    return succeed({"reset": call.args.get("what")})


def broken(call: Call) -> Any:
    return {"not": "a Deferred"}


def refusing(call: Call) -> Deferred[Any]:
    raise RPCError(409, "not now")


class TableTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = SyncClock()
        checker = alice_and_bob(self, self.clock)
        self.auth = Authenticator(self.clock, checker, token_ttl=900)
        self.table = standard_table()
        # The new area: one name without actions, one with an action for full access.
        self.table.register("rpc", "ping", ping, role=Role.READ)
        self.table.register("rpc", "maintenance", reset, role=Role.FULL, action="reset", what="reset things")
        self.table.register("rpc", "hello", ping, role=Role.PUBLIC)
        self.router = Router(Dispatcher(self.clock, environ={}), self.auth, table=self.table)

    # The WebSocket shape: bytes of a whole message, a session that lasts.

    def ws(self, session: Session, name: str, args: Any = None) -> Any:
        data = json.dumps({"namespace": "rpc", "name": name, "id": "w", "args": args}).encode()
        return self.successResultOf(self.router.handle_bytes(session, data))

    def ws_session(self, user: str | None) -> Session:
        session = Session(peer="192.0.2.7", transport="websocket")
        if user is not None:
            reply = self.ws(session, "auth", {"username": user, "password": PASSWORDS[user]})
            self.assertEqual(reply["name"], "response", reply)
        return session

    # The REST shape: a PUT with Basic credentials, through the Klein app.

    def rest(self, name: str, args: Any, user: str | None) -> tuple[int, Any]:
        stub = StubTreq(RestAPI(self.router).resource())
        headers = {}
        if user is not None:
            token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        response = self.successResultOf(stub.put(f"http://127.0.0.1/rpc/{name}", data=json.dumps(args).encode(),
                                                 headers=headers))
        body = self.successResultOf(response.content())
        stub.flush()
        return response.code, json.loads(body) if body else None


class NewHandlerTests(TableTestCase):
    def test_reachable_over_the_websocket_shape(self) -> None:
        self.assertEqual(self.ws(self.ws_session("bob"), "ping", [1])["args"], {"pong": [1], "user": "bob"})

    def test_reachable_over_rest(self) -> None:
        self.assertEqual(self.rest("ping", {"n": 2}, "bob"), (200, {"args": {"pong": {"n": 2}, "user": "bob"}}))

    def test_an_action_for_full_access(self) -> None:
        args = {"action": "reset", "what": "cache"}
        self.assertEqual(self.ws(self.ws_session("alice"), "maintenance", args)["args"], {"reset": "cache"})
        self.assertEqual(self.rest("maintenance", args, "alice"), (200, {"args": {"reset": "cache"}}))
        code, body = self.rest("maintenance", args, "bob")
        self.assertEqual(code, 403)
        self.assertIn("may not reset things", body["args"]["detail"])
        refused = self.ws(self.ws_session("bob"), "maintenance", {"action": "explode"})
        self.assertEqual(refused["args"]["code"], 400)
        self.assertIn("unknown action 'explode' (reset)", refused["args"]["detail"])

    def test_login_needed_unless_public(self) -> None:
        self.assertEqual(self.ws(self.ws_session(None), "ping")["args"]["code"], 401)
        self.assertEqual(self.rest("ping", {}, None)[0], 401)
        self.assertEqual(self.ws(self.ws_session(None), "hello", "hi")["args"], {"pong": "hi", "user": None})
        self.assertEqual(self.rest("hello", "hi", None), (200, {"args": {"pong": "hi", "user": None}}))
        self.assertTrue(self.router.is_public("rpc", "hello"))
        self.assertFalse(self.router.is_public("rpc", "ping"))

    def test_listed_by_query(self) -> None:
        alice = self.ws(self.ws_session("alice"), "query")["args"]
        bob = self.ws(self.ws_session("bob"), "query")["args"]
        self.assertEqual(alice, {"rpc/dispatcher": "read/write", "rpc/logs": "read", "rpc/ping": "read",
                                 "rpc/maintenance": "read/write"})
        self.assertEqual(bob, {"rpc/dispatcher": "read", "rpc/logs": "read", "rpc/ping": "read",
                               "rpc/maintenance": "read"})
        self.assertEqual(self.rest("query", {}, "alice"), (200, {"args": alice}))

    def test_the_standard_table_is_not_changed(self) -> None:
        self.assertNotIn(("rpc", "ping"), standard_table().names())
        self.assertEqual(set(PUBLIC), {("rpc", "auth"), ("rpc", "auth_token"), ("rpc", "auth_clear"),
                                       ("rpc", "identify")})


class TableRuleTests(TableTestCase):
    def test_one_handler_per_key(self) -> None:
        table = HandlerTable()
        table.register("rpc", "a", ping, role=Role.READ)
        with self.assertRaises(ValueError):
            table.register("rpc", "a", ping, role=Role.READ)
        table.register("rpc", "b", ping, role=Role.READ, action="x")
        with self.assertRaises(ValueError):
            table.register("rpc", "b", ping, role=Role.READ, action="x")
        with self.assertRaises(ValueError):
            table.register("rpc", "b", ping, role=Role.READ)  # with and without actions
        with self.assertRaises(ValueError):
            table.register("rpc", "c", ping, role=Role.FULL)  # full access says what it does

    def test_actions_in_order(self) -> None:
        self.assertEqual(self.table.actions("rpc", "dispatcher"), ["list", "run", "kill"])
        self.assertEqual(self.table.actions("rpc", "logs"), ["read_logs", "job"])
        self.assertEqual(self.table.actions("rpc", "ping"), [])

    def test_rpc_error_is_the_reply(self) -> None:
        self.table.register("rpc", "busy", refusing, role=Role.READ)
        reply = self.ws(self.ws_session("bob"), "busy")
        self.assertEqual(reply["args"], {"code": 409, "message": "Conflict", "detail": "not now"})

    def test_a_handler_that_returns_no_deferred_is_a_bug(self) -> None:
        self.table.register("rpc", "broken", broken, role=Role.READ)
        reply = self.ws(self.ws_session("bob"), "broken")
        self.assertEqual(reply["args"]["code"], 500)
        self.assertNotIn("Deferred", json.dumps(reply))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_a_handler_that_fails_late_with_a_bug_is_500(self) -> None:
        waiting: Deferred[Any] = Deferred()
        self.table.register("rpc", "late", lambda call: waiting, role=Role.READ)
        d = self.router.handle_bytes(self.ws_session("bob"), b'{"namespace": "rpc", "name": "late", "id": "l"}')
        self.assertNoResult(d)
        waiting.errback(KeyError("inside"))
        self.assertEqual(self.successResultOf(d)["args"]["code"], 500)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class StandardPathsOverRestTests(TableTestCase):
    """A few of the standard table's paths through the Klein app, in memory."""

    def put(self, stub: StubTreq, path: str, args: Any, token: str | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.successResultOf(stub.put(f"http://127.0.0.1{path}", data=json.dumps(args).encode(),
                                                 headers=headers))
        return response.code, self.successResultOf(response.content())

    def test_login_list_and_logout(self) -> None:
        stub = StubTreq(RestAPI(self.router).resource())
        code, body = self.put(stub, "/rpc/auth", {"username": "bob", "password": "pw-b"})
        self.assertEqual(code, 200)
        token, ttl = json.loads(body)["args"]
        self.assertEqual(ttl, 900)
        self.assertEqual(self.put(stub, "/rpc/dispatcher", {"action": "list"}, token),
                         (200, b'{"args":{"jobs":{}}}'))
        # auth_clear has no reply: 204, and the token is gone.
        self.assertEqual(self.put(stub, "/rpc/auth_clear", {}, token), (204, b""))
        code, body = self.put(stub, "/rpc/dispatcher", {"action": "list"}, token)
        self.assertEqual(code, 401)

    def test_unknown_and_wrong_method(self) -> None:
        stub = StubTreq(RestAPI(self.router).resource())
        code, body = self.put(stub, "/rpc/identify", {})
        self.assertEqual((code, json.loads(body)["args"]["type"]), (200, "server"))
        response = self.successResultOf(stub.get("http://127.0.0.1/rpc/identify"))
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("Allow"), ["PUT, POST"])
        code, body = self.put(stub, "/rpc/nope", {})
        self.assertEqual(code, 401)  # unknown, and not public: log in first


class WampThroughTheTableTests(TableTestCase):
    """WAMP calls reach the same table, with the caller's role from its WAMP authrole."""

    def call(self, request: Any, role: str) -> Any:
        host = WampHost(self.router, "ws://127.0.0.1:1/", host="h", ticket="t", reactor=MemoryReactorClock())
        return host._call(request, details=SimpleNamespace(caller_authid="carol", caller_authrole=role))

    def test_a_new_action_over_wamp(self) -> None:
        request = {"namespace": "rpc", "name": "maintenance", "args": {"action": "reset", "what": "x"}}
        self.assertEqual(self.successResultOf(self.call(request, "operator")), {"reset": "x"})
        failure = self.failureResultOf(self.call(request, "viewer"), ApplicationError)
        self.assertEqual(failure.value.kwargs["code"], 403)
        listed = self.successResultOf(self.call({"namespace": "rpc", "name": "query"}, "viewer"))
        self.assertEqual(listed["rpc/maintenance"], "read")

    def test_the_login_area_is_not_used_over_wamp(self) -> None:
        failure = self.failureResultOf(self.call({"namespace": "rpc", "name": "auth_token", "args": {}}, "viewer"),
                                       ApplicationError)
        self.assertEqual(failure.value.kwargs["code"], 400)


class AnswerBytesTests(TableTestCase):
    """``Router.answer_bytes``: the reply envelope goes to the transport's continuation, in request order."""

    def answer(self, session: Session, data: bytes) -> tuple[list[Any], Deferred[Any]]:
        answers: list[Any] = []

        def answer(envelope: Any) -> str:
            answers.append(envelope)
            return f"sent {len(answers)}"

        return answers, self.router.answer_bytes(session, data, answer)

    def test_an_answer_known_at_once_is_handed_on_before_the_call_returns(self) -> None:
        answers, d = self.answer(self.ws_session("bob"), b'{"namespace": "rpc", "name": "ping", "id": "p", "args": 1}')
        self.assertEqual(answers, [{"namespace": "rpc", "name": "response", "id": "p",
                                    "args": {"pong": 1, "user": "bob"}}])
        self.assertEqual(self.successResultOf(d), "sent 1")

    def test_refusals_errors_and_silence_reach_the_continuation(self) -> None:
        session = self.ws_session("bob")
        answers, _ = self.answer(session, b"{not json")
        self.assertEqual(answers[0]["args"]["code"], 400)
        answers, _ = self.answer(session, b'{"namespace": "rpc", "name": "maintenance", "id": "m", '
                                          b'"args": {"action": "reset"}}')
        self.assertEqual((answers[0]["name"], answers[0]["id"], answers[0]["args"]["code"]), ("error", "m", 403))
        self.table.register("rpc", "refusing", refusing, role=Role.READ)
        answers, _ = self.answer(session, b'{"namespace": "rpc", "name": "refusing", "id": "r"}')
        self.assertEqual(answers[0]["args"]["code"], 409)
        answers, d = self.answer(session, b'{"namespace": "rpc", "name": "auth_clear", "id": "c"}')
        self.assertEqual(answers, [None])
        self.assertEqual(self.successResultOf(d), "sent 1")

    def test_a_late_answer_waits_for_its_handler_and_a_late_bug_is_500(self) -> None:
        waiting: list[Deferred[Any]] = []

        def late(call: Call) -> Deferred[Any]:
            waiting.append(Deferred())
            return waiting[-1]

        self.table.register("rpc", "late", late, role=Role.READ)
        session = self.ws_session("bob")
        first, d1 = self.answer(session, b'{"namespace": "rpc", "name": "late", "id": "1"}')
        second, d2 = self.answer(session, b'{"namespace": "rpc", "name": "late", "id": "2"}')
        self.assertEqual((first, second), ([], []))
        self.assertNoResult(d1)
        waiting[1].errback(KeyError("inside"))
        waiting[0].callback("done")
        self.assertEqual(first, [{"namespace": "rpc", "name": "response", "id": "1", "args": "done"}])
        self.assertEqual((second[0]["id"], second[0]["args"]["code"]), ("2", 500))
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), ("sent 1", "sent 1"))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
