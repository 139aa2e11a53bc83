"""
Unit tests for ``sysadm_dispatch.api.router``: JSON decoding and the envelope rules
of the ``Router``, with a real ``Dispatcher`` and ``Authenticator`` built on a
``Clock``.  No transport, no processes: no request here makes a job start.

Password checks normally run in the reactor's thread pool; the Clock here
offers a "thread pool" that runs them at once, so every reply is ready when
``handle_*`` returns and ``successResultOf`` can read it.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from security_helpers import SyncClock, alice_and_bob
from twisted.trial.unittest import SynchronousTestCase

from sysadm_dispatch.api.router import MAX_DEPTH, PUBLIC, Router, RPCError, Session, decode_json, error_reply, reply
from sysadm_dispatch.auth.login import Authenticator
from sysadm_dispatch.core.dispatcher import Dispatcher

TTL = 900


class FakeEvents:
    """What a WebSocket connection offers the router for events."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []

    def subscribe(self, name: str) -> None:
        self.subscribed.append(name)

    def unsubscribe(self, name: str) -> None:
        self.subscribed.remove(name)


class DecodeJSONTests(SynchronousTestCase):
    def assertBad(self, data: bytes, *words: str) -> RPCError:
        with self.assertRaises(RPCError) as info:
            decode_json(data)
        self.assertEqual(info.exception.code, 400)
        for word in words:
            self.assertIn(word, info.exception.detail)
        return info.exception

    def test_valid(self) -> None:
        self.assertEqual(decode_json(b'{"a": [1, 2.5, "\xc3\xa9", null, true]}'), {"a": [1, 2.5, "é", None, True]})

    def test_invalid_utf8(self) -> None:
        self.assertBad(b'{"a": "\xff"}', "UTF-8", "byte 7")
        self.assertBad(b"\xc3", "UTF-8")

    def test_not_json(self) -> None:
        for data in [b"", b"nope", b"{", b'{"a": 1,}', b"{'a': 1}", b'{"a": 1} x']:
            self.assertBad(data, "not valid JSON")

    def test_nan_and_infinity_are_rejected(self) -> None:
        for literal in [b"NaN", b"Infinity", b"-Infinity"]:
            self.assertBad(b'{"timeout": ' + literal + b"}", literal.decode().lstrip("-"))

    def test_nesting(self) -> None:
        ok = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
        self.assertIsInstance(decode_json(ok), list)
        self.assertBad(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}")
        deep_objects = b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1)
        self.assertBad(deep_objects, f"deeper than {MAX_DEPTH}")

    def test_nesting_far_past_the_recursion_limit(self) -> None:
        self.assertBad(b"[" * 200_000 + b"]" * 200_000, f"deeper than {MAX_DEPTH}")
        self.assertBad(b"[" * 200_000, "")

    def test_huge_integer(self) -> None:
        self.assertBad(b'{"timeout": ' + b"1" + b"0" * 5000 + b"}", "not valid JSON")

    def test_large_but_convertible_integer_is_fine(self) -> None:
        self.assertEqual(decode_json(str(10**100).encode()), 10**100)


class RouterTestCase(SynchronousTestCase):
    """A router with a users file holding a full and a read user."""

    def setUp(self) -> None:
        self.clock = SyncClock()
        checker = alice_and_bob(self, self.clock)
        self.auth = Authenticator(self.clock, checker, token_ttl=TTL)
        self.dispatcher = self.make_dispatcher()
        self.router = Router(self.dispatcher, self.auth, max_message_bytes=1024)

    def make_dispatcher(self) -> Dispatcher:
        return Dispatcher(self.clock, environ={})

    def session(self, login: str | None = None) -> Session:
        session = Session(peer="192.0.2.1")
        if login is not None:
            passwords = {"alice": "pw-a", "bob": "pw-b"}
            result = self.call(session, "auth", {"username": login, "password": passwords[login]})
            self.assertEqual(result["name"], "response", result)
        return session

    def send(self, session: Session, message: Any) -> Any:
        return self.successResultOf(self.router.handle_message(session, message))

    def send_bytes(self, session: Session, data: bytes) -> Any:
        return self.successResultOf(self.router.handle_bytes(session, data))

    def call(self, session: Session, name: str, args: Any = None, namespace: str = "rpc", id: str = "x1") -> Any:
        return self.send(session, {"namespace": namespace, "name": name, "id": id, "args": args})

    def assertError(self, message: Any, code: int, *words: str, namespace: str = "rpc", id: str = "x1") -> None:
        self.assertEqual(message["name"], "error", message)
        self.assertEqual((message["namespace"], message["id"]), (namespace, id), message)
        args = message["args"]
        self.assertEqual(set(args), {"code", "message", "detail"})
        self.assertEqual(args["code"], code, message)
        self.assertIsInstance(args["code"], int)
        self.assertTrue(args["message"] and isinstance(args["detail"], str), message)
        for word in words:
            self.assertIn(word, args["detail"])
        json.dumps(message, allow_nan=False)

    def assertResponse(self, message: Any, args: Any, namespace: str = "rpc", id: str = "x1") -> None:
        self.assertEqual(message, {"namespace": namespace, "name": "response", "id": id, "args": args})


class EnvelopeTests(RouterTestCase):
    def test_reply_shapes(self) -> None:
        self.assertEqual(reply("events", "i", [1]), {"namespace": "events", "name": "response", "id": "i", "args": [1]})
        self.assertEqual(error_reply("rpc", "i", RPCError(404, "no such thing")),
                         {"namespace": "rpc", "name": "error", "id": "i",
                          "args": {"code": 404, "message": "Not Found", "detail": "no such thing"}})

    def test_bytes_not_json(self) -> None:
        self.assertError(self.send_bytes(self.session(), b"{nope"), 400, "not valid JSON", id="")

    def test_bytes_invalid_utf8(self) -> None:
        self.assertError(self.send_bytes(self.session(), b'{"id": "\xff"}'), 400, "UTF-8", id="")

    def test_bytes_nan(self) -> None:
        data = b'{"namespace": "rpc", "name": "identify", "id": "a", "args": NaN}'
        self.assertError(self.send_bytes(self.session(), data), 400, "NaN", id="")

    def test_bytes_too_deep(self) -> None:
        data = b'{"namespace": "rpc", "name": "identify", "id": "a", "args": ' + b"[" * 40 + b"]" * 40 + b"}"
        # It parses: the error keeps the request's id.
        self.assertError(self.send_bytes(self.session(), data), 400, "deeper", id="a")

    def test_bytes_ok(self) -> None:
        data = json.dumps({"namespace": "rpc", "name": "identify", "id": "b7"}).encode()
        self.assertResponse(self.send_bytes(self.session(), data), {"type": "server", "hostname": socket.gethostname()},
                            id="b7")

    def test_message_too_large(self) -> None:
        session = self.session("alice")
        big = json.dumps({"namespace": "rpc", "name": "identify", "id": "big", "args": "x" * 2000}).encode()
        self.assertError(self.send_bytes(session, big), 413, str(len(big)), "1024", id="")
        # The session stays usable.
        small = json.dumps({"namespace": "rpc", "name": "query", "id": "q"}).encode()
        self.assertEqual(self.send_bytes(session, small)["name"], "response")

    def test_message_at_the_limit(self) -> None:
        message = {"namespace": "rpc", "name": "identify", "id": "edge", "args": ""}
        data = json.dumps(message).encode()
        message["args"] = "x" * (1024 - len(data))
        data = json.dumps(message).encode()
        self.assertEqual(len(data), 1024)
        self.assertEqual(self.send_bytes(self.session(), data)["name"], "response")
        self.assertError(self.send_bytes(self.session(), data + b" "), 413, id="")

    def test_not_an_object(self) -> None:
        for message in [[], "identify", 3, None, [{"namespace": "rpc", "name": "identify"}]]:
            self.assertError(self.send(self.session(), message), 400, "JSON object", id="")

    def test_missing_or_bad_namespace(self) -> None:
        for namespace in [None, 3, ["rpc"], {"a": 1}]:
            message: dict[str, Any] = {"name": "identify", "id": "n1"}
            if namespace is not None:
                message["namespace"] = namespace
            self.assertError(self.send(self.session(), message), 400, "namespace", id="n1")

    def test_missing_or_bad_name(self) -> None:
        for name in [None, 3, ["identify"], True]:
            message: dict[str, Any] = {"namespace": "events", "id": "n2"}
            if name is not None:
                message["name"] = name
            self.assertError(self.send(self.session(), message), 400, "name", namespace="events", id="n2")

    def test_id_echoed(self) -> None:
        for request_id in ["", "fooid", "é ü", "x" * 300, '{"not": "parsed"}']:
            self.assertResponse(self.call(self.session(), "identify", id=request_id),
                                {"type": "server", "hostname": socket.gethostname()}, id=request_id)

    def test_missing_id_echoed_as_empty(self) -> None:
        self.assertEqual(self.send(self.session(), {"namespace": "rpc", "name": "identify"})["id"], "")
        self.assertError(self.send(self.session(), {"namespace": "rpc", "name": "nope"}), 401, id="")

    def test_non_string_id(self) -> None:
        message = {"namespace": "rpc", "name": "identify", "id": 42}
        self.assertEqual(self.send(self.session(), message)["id"], "42")
        message["id"] = ["a"]
        self.assertEqual(self.send(self.session(), message)["id"], "")

    def test_namespace_echoed(self) -> None:
        session = self.session("alice")
        self.assertError(self.call(session, "subscribe", ["dispatcher"], namespace="events"), 400, "WebSocket",
                         namespace="events")
        self.assertError(self.call(session, "nope", namespace="events"), 404, "events/nope", namespace="events")
        self.assertError(self.call(session, "identify", namespace="other"), 404, "other/identify", namespace="rpc")

    def test_unknown_pair_before_and_after_auth(self) -> None:
        for namespace, name in [("rpc", "nope"), ("events", "nope"), ("other", "dispatcher"), ("rpc", "Dispatcher")]:
            expect = namespace if namespace in ("rpc", "events") else "rpc"
            self.assertError(self.call(self.session(), name, namespace=namespace), 401, namespace=expect)
            self.assertError(self.call(self.session("bob"), name, namespace=namespace), 404, f"{namespace}/{name}",
                             namespace=expect)

    def test_every_non_public_request_needs_auth(self) -> None:
        for namespace, name in self.router.table.names():
            if (namespace, name) in PUBLIC:
                continue
            self.assertError(self.call(self.session(), name, {"action": "list"}, namespace=namespace), 401,
                             "not authenticated", namespace=namespace)

    def test_identify_without_auth(self) -> None:
        self.assertResponse(self.call(self.session(), "identify"), {"type": "server", "hostname": socket.gethostname()})

    def test_unexpected_exception_is_500_without_traceback(self) -> None:
        class Broken(Dispatcher):
            def list_jobs(self) -> Any:
                raise RuntimeError("secret internals /etc/shadow")

        self.router.dispatcher = Broken(self.clock)
        result = self.call(self.session("alice"), "dispatcher", {"action": "list"})
        self.assertError(result, 500)
        text = json.dumps(result)
        for leak in ["secret internals", "Traceback", "RuntimeError", "router.py", "line "]:
            self.assertNotIn(leak, text)
        # It is logged, with its traceback, for the operator.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # And the session stays usable.
        self.router.dispatcher = self.dispatcher
        self.assertResponse(self.call(self.session("alice"), "dispatcher", {"action": "list"}), {"jobs": {}})


class AuthTests(RouterTestCase):
    def test_auth(self) -> None:
        session = self.session()
        result = self.call(session, "auth", {"username": "alice", "password": "pw-a"})
        self.assertEqual(result["name"], "response")
        token, ttl = result["args"]
        self.assertEqual(ttl, TTL)
        self.assertIsInstance(ttl, int)
        self.assertEqual((session.token, session.user.name if session.user else None), (token, "alice"))
        self.assertResponse(self.call(session, "query"), {"rpc/dispatcher": "read/write", "rpc/logs": "read"})

    def test_auth_bad_credentials(self) -> None:
        for args in [{"username": "alice", "password": "pw-b"}, {"username": "zed", "password": "pw-a"},
                     {"username": "alice", "password": ""}]:
            session = self.session()
            self.assertError(self.call(session, "auth", args), 401)
            self.assertIsNone(session.token)
            self.assertError(self.call(session, "query"), 401)

    def test_auth_bad_args(self) -> None:
        for args in [None, "alice", ["alice", "pw-a"], {"username": "alice"}, {"username": 1, "password": "pw-a"},
                     {"username": "alice", "password": None}]:
            self.assertError(self.call(self.session(), "auth", args), 400)

    def test_relogin_revokes_the_old_token(self) -> None:
        session = self.session("alice")
        old = session.token
        self.call(session, "auth", {"username": "bob", "password": "pw-b"})
        self.assertNotEqual(session.token, old)
        self.assertError(self.call(self.session(), "auth_token", {"token": old}), 401)
        self.assertResponse(self.call(session, "query"), {"rpc/dispatcher": "read", "rpc/logs": "read"})

    def test_auth_token_shares_a_token_across_sessions(self) -> None:
        token = self.session("bob").token
        other = self.session()
        self.assertResponse(self.call(other, "auth_token", {"token": token}), [token, TTL])
        self.assertResponse(self.call(other, "query"), {"rpc/dispatcher": "read", "rpc/logs": "read"})

    def test_auth_token_bad(self) -> None:
        self.assertError(self.call(self.session(), "auth_token", {"token": "nope"}), 401)
        for args in [None, "tok", {"token": 5}, {}]:
            self.assertError(self.call(self.session(), "auth_token", args), 400)

    def test_auth_clear(self) -> None:
        session = self.session("alice")
        token = session.token
        self.assertIsNone(self.successResultOf(self.router.handle_message(
            session, {"namespace": "rpc", "name": "auth_clear", "id": "c", "args": {}})))
        self.assertIsNone(session.token)
        self.assertIsNone(session.user)
        self.assertEqual(len(self.auth.tokens), 0)
        self.assertError(self.call(session, "query"), 401)
        self.assertError(self.call(self.session(), "auth_token", {"token": token}), 401, "unknown or expired")

    def test_auth_clear_unauthenticated(self) -> None:
        self.assertIsNone(self.successResultOf(self.router.handle_bytes(
            self.session(), b'{"namespace": "rpc", "name": "auth_clear", "id": "c"}')))

    def test_token_expires_through_the_router(self) -> None:
        session = self.session("alice")
        self.clock.advance(TTL - 1)
        self.assertEqual(self.call(session, "query")["name"], "response", "a request before the ttl succeeds")
        self.clock.advance(TTL - 1)
        self.assertEqual(self.call(session, "query")["name"], "response", "and renewed the token")
        self.clock.advance(TTL)
        self.assertError(self.call(session, "query"), 401, "expired")
        self.assertIsNone(session.token)
        self.assertIsNone(session.user)
        # identify still works, and logging in again restores access
        self.assertEqual(self.call(session, "identify")["name"], "response")
        self.call(session, "auth", {"username": "alice", "password": "pw-a"})
        self.assertEqual(self.call(session, "query")["name"], "response")

    def test_removed_user_loses_access(self) -> None:
        session = self.session("bob")
        checker = self.auth.checker
        del checker.users["bob"]
        checker.changed += 1
        self.assertError(self.call(session, "query"), 401)


class DispatcherRequestTests(RouterTestCase):
    def test_list_empty(self) -> None:
        self.assertResponse(self.call(self.session("bob"), "dispatcher", {"action": "list"}), {"jobs": {}})

    def test_bad_dispatcher_args(self) -> None:
        session = self.session("alice")
        for args, word in [(None, "object"), ([], "object"), ("list", "object"), ({}, "missing"),
                           ({"action": "explode"}, "'explode'"), ({"action": 5}, "unknown action")]:
            self.assertError(self.call(session, "dispatcher", args), 400, word)

    def test_read_user_may_not_run_or_kill(self) -> None:
        session = self.session("bob")
        self.assertError(self.call(session, "dispatcher", {"action": "run", "x": "true"}), 403, "'bob'")
        self.assertError(self.call(session, "dispatcher", {"action": "kill", "job_id": "x"}), 403, "'bob'")
        self.assertEqual(self.dispatcher.jobs, {})

    def test_run_without_auth(self) -> None:
        self.assertError(self.call(self.session(), "dispatcher", {"action": "run", "x": "true"}), 401)
        self.assertEqual(self.dispatcher.jobs, {})

    def test_invalid_run_is_400_naming_the_job_and_queues_nothing(self) -> None:
        session = self.session("alice")
        args = {"action": "run", "jobs": [{"id": "good", "commands": "true"},
                                          {"id": "bad", "commands": 'echo "unclosed'}]}
        self.assertError(self.call(session, "dispatcher", args), 400, "job 'bad'")
        self.assertEqual(self.dispatcher.jobs, {})
        self.assertError(self.call(session, "dispatcher", {"action": "run"}), 400, "no jobs")
        self.assertError(self.call(session, "dispatcher", {"action": "run", "x": 5}), 400, "job 'x'")
        args = {"action": "run", "jobs": [{"id": "c", "commands": "true", "cwd": "/no/such/directory"}]}
        self.assertError(self.call(session, "dispatcher", args), 400, "job 'c'", "cwd")
        self.assertEqual(self.dispatcher.jobs, {})

    def test_kill_bad_job_id(self) -> None:
        session = self.session("alice")
        for args in [{"action": "kill"}, {"action": "kill", "job_id": 5}, {"action": "kill", "job_id": []},
                     {"action": "kill", "job_id": ["a", 5]}, {"action": "kill", "job_id": {"a": 1}}]:
            self.assertError(self.call(session, "dispatcher", args), 400, "job_id")

    def test_kill_unknown(self) -> None:
        result = self.call(self.session("alice"), "dispatcher", {"action": "kill", "job_id": ["a", "b", "a"]})
        self.assertResponse(result, {"killed": {"jobs": [], "not_found": ["a", "b"]}})

    def test_query_by_role(self) -> None:
        self.assertResponse(self.call(self.session("alice"), "query"), {"rpc/dispatcher": "read/write",
                                                                        "rpc/logs": "read"})
        self.assertResponse(self.call(self.session("bob"), "query"), {"rpc/dispatcher": "read", "rpc/logs": "read"})


class UnavailableTests(RouterTestCase):
    def make_dispatcher(self) -> Dispatcher:
        return Dispatcher(self.clock, environ={}, max_pending=0)

    def test_full_dispatcher_is_503(self) -> None:
        result = self.call(self.session("alice"), "dispatcher", {"action": "run", "x": "true"})
        self.assertError(result, 503, "pending")
        self.assertEqual(self.dispatcher.jobs, {})


class EventsRequestTests(RouterTestCase):
    def events_session(self, login: str = "bob") -> Session:
        session = self.session(login)
        session.events = FakeEvents()
        return session

    def test_subscribe_and_unsubscribe(self) -> None:
        session = self.events_session()
        assert isinstance(session.events, FakeEvents)
        self.assertResponse(self.call(session, "subscribe", ["dispatcher"], namespace="events"),
                            {"subscribe": "dispatcher"}, namespace="events")
        self.assertEqual(session.events.subscribed, ["dispatcher"])
        self.assertResponse(self.call(session, "unsubscribe", "dispatcher", namespace="events"),
                            {"unsubscribe": "dispatcher"}, namespace="events")
        self.assertEqual(session.events.subscribed, [])

    def test_unknown_event_names_are_ignored(self) -> None:
        session = self.events_session()
        self.assertResponse(self.call(session, "subscribe", ["nope", "dispatcher"], namespace="events"),
                            {"subscribe": "dispatcher"}, namespace="events")

    def test_no_known_event_is_400(self) -> None:
        session = self.events_session()
        for args in [["nope"], [], "nope", None, 5, [5], {"a": "dispatcher"}]:
            self.assertError(self.call(session, "subscribe", args, namespace="events"), 400, namespace="events")
        assert isinstance(session.events, FakeEvents)
        self.assertEqual(session.events.subscribed, [])

    def test_subscribe_needs_auth(self) -> None:
        session = self.session()
        session.events = FakeEvents()
        self.assertError(self.call(session, "subscribe", "dispatcher", namespace="events"), 401, namespace="events")
        self.assertEqual(session.events.subscribed, [])


class LogsTests(RouterTestCase):
    """rpc/logs through the router; this dispatcher has no store, so no history."""

    def test_logs_needs_auth(self) -> None:
        self.assertError(self.call(self.session(), "logs", {"action": "job", "job_id": "x"}), 401)

    def test_logs_without_a_store_is_503(self) -> None:
        session = self.session("bob")
        args = {"action": "read_logs", "logs": "dispatcher", "time_format": "relative_second", "start_time": "-3600"}
        self.assertError(self.call(session, "logs", args), 503, "history")
        self.assertError(self.call(session, "logs", {"action": "job", "job_id": "x"}), 503, "history")

    def test_logs_bad_args(self) -> None:
        session = self.session("bob")
        for args, word in [(None, "object"), ("read_logs", "object"), ({}, "missing"), ({"action": "nope"}, "'nope'"),
                           ({"action": "job"}, "job_id"), ({"action": "job", "job_id": 5}, "job_id"),
                           ({"action": "job", "job_id": ""}, "job_id")]:
            self.assertError(self.call(session, "logs", args), 400, word)


class LoginGuardTests(RouterTestCase):
    """PROTOCOL §4: 5 failed logins from one address within 10 minutes block it for 60 minutes."""

    def fail_login(self, peer: str = "192.0.2.1") -> None:
        self.assertError(self.call(Session(peer=peer), "auth", {"username": "alice", "password": "wrong"}), 401)

    def login(self, peer: str = "192.0.2.1") -> Any:
        return self.call(Session(peer=peer), "auth", {"username": "alice", "password": "pw-a"})

    def test_failed_logins_block_the_address(self) -> None:
        for _ in range(5):
            self.fail_login()
            self.clock.advance(60)
        self.assertError(self.login(), 403, "192.0.2.1")
        self.assertError(self.call(self.session(), "identify"), 403)
        self.assertError(self.send_bytes(self.session(), b"not json"), 403, id="")
        self.assertEqual(self.login("192.0.2.99")["name"], "response", "other addresses are not blocked")
        self.clock.advance(3601)
        self.assertEqual(self.login()["name"], "response")

    def test_failures_outside_the_window_do_not_count(self) -> None:
        for _ in range(5):
            self.fail_login()
            self.clock.advance(151)  # five failures spread over more than 10 minutes
        self.assertEqual(self.login()["name"], "response")

    def test_a_success_resets_the_count(self) -> None:
        for _ in range(4):
            self.fail_login()
        self.assertEqual(self.login()["name"], "response")
        for _ in range(4):
            self.fail_login()
        self.assertEqual(self.login()["name"], "response")
