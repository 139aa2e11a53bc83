"""
Security hardening: failed-login blocking (LoginGuard on a Clock, then for
real over both transports), X-Forwarded-For only with --trust-proxy, idle
and authentication timeouts, per-address connection limits, the limits on
what one request may ask, secrets kept out of logs and replies, and a state
directory or users file that others could write refused at startup.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
import pytest_twisted
import treq
from conftest import PYTHON, Server, deferLater, poll, python_env, with_timeout
from security_helpers import Counter, Refused, SyncClock, captured_log, cheap_hash, log_text, ws_connect
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from sysadm_dispatch import tap
from sysadm_dispatch.api.router import RPCError, decode_json
from sysadm_dispatch.auth.blocking import AddressBlocked, LoginGuard
from sysadm_dispatch.auth.checker import UsersFileChecker
from sysadm_dispatch.auth.login import Authenticator
from sysadm_dispatch.auth.tokens import TokenStore
from sysadm_dispatch.auth.users import FULL, LoginFailed, User, UserEntry, write_users
from sysadm_dispatch.transports.limits import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    ConnectionCounter,
    SessionTimer,
    client_address,
)

ensure = pytest_twisted.ensureDeferred


# LoginGuard, on a Clock.


def attempt_and_fail(guard: LoginGuard, address: str) -> None:
    d = guard.attempt(address)
    assert d.called, "an attempt within the budget starts at once"
    guard.failed(address)


def test_guard_blocks_after_max_failures_within_window() -> None:
    clock = Clock()
    guard = LoginGuard(clock, max_failures=3, window=600, block_seconds=3600)
    for _ in range(2):
        attempt_and_fail(guard, "10.0.0.1")
        clock.advance(100)
    assert not guard.is_blocked("10.0.0.1")
    attempt_and_fail(guard, "10.0.0.1")
    assert guard.is_blocked("10.0.0.1")
    assert not guard.is_blocked("10.0.0.2"), "counted per address"
    with pytest.raises(AddressBlocked) as info:
        guard.check("10.0.0.1")
    assert "60 more minutes" in str(info.value)
    failure = guard.attempt("10.0.0.1").result
    assert isinstance(failure, Failure) and failure.check(AddressBlocked)
    failure.trap(AddressBlocked)
    clock.advance(3599)
    assert guard.is_blocked("10.0.0.1")
    clock.advance(1)
    assert not guard.is_blocked("10.0.0.1"), "released after block_seconds"
    assert guard.failures("10.0.0.1") == 0, "and starts with a clean count"


def test_guard_failures_outside_the_window_expire() -> None:
    clock = Clock()
    guard = LoginGuard(clock, max_failures=3, window=600, block_seconds=3600)
    attempt_and_fail(guard, "a")
    attempt_and_fail(guard, "a")
    clock.advance(601)
    assert guard.failures("a") == 0
    attempt_and_fail(guard, "a")
    attempt_and_fail(guard, "a")
    assert not guard.is_blocked("a")


def test_guard_success_resets() -> None:
    clock = Clock()
    guard = LoginGuard(clock, max_failures=3)
    attempt_and_fail(guard, "a")
    attempt_and_fail(guard, "a")
    guard.attempt("a")
    guard.succeeded("a")
    assert guard.failures("a") == 0
    attempt_and_fail(guard, "a")
    attempt_and_fail(guard, "a")
    assert not guard.is_blocked("a")


def test_guard_never_lets_more_guesses_run_than_failures_left() -> None:
    clock = Clock()
    guard = LoginGuard(clock, max_failures=3)
    attempt_and_fail(guard, "a")
    started = [guard.attempt("a") for _ in range(10)]
    assert [d.called for d in started] == [True, True] + [False] * 8
    guard.succeeded("a")  # a success resets the count: two more may start (three in flight)
    assert sum(d.called for d in started) == 4
    guard.failed("a")
    guard.failed("a")
    assert sum(d.called for d in started) == 4, "one in flight and two failures: no room"
    guard.failed("a")
    assert guard.is_blocked("a")
    # The third failure blocked the address: the waiting attempts are refused.
    refused = [d for d in started if isinstance(getattr(d, "result", None), Failure)]
    assert len(refused) == 6
    for d in refused:
        d.result.trap(AddressBlocked)


def test_guard_abandoned_attempt_frees_its_slot() -> None:
    guard = LoginGuard(Clock(), max_failures=1)
    assert guard.attempt("a").called
    waiting = guard.attempt("a")
    assert not waiting.called
    guard.abandoned("a")
    assert waiting.called and guard.failures("a") == 0


def test_guard_forgets_the_oldest_addresses_past_its_cap() -> None:
    guard = LoginGuard(Clock(), max_failures=5)
    guard.max_tracked = 100
    for i in range(150):
        attempt_and_fail(guard, f"10.0.{i // 256}.{i % 256}")
    assert len(guard._failures) <= 100
    assert guard.failures("10.0.0.149") == 1, "the most recent are kept"


def test_guard_logs_block_and_release() -> None:
    clock = Clock()
    guard = LoginGuard(clock, max_failures=1, block_seconds=60)
    with captured_log() as events:
        attempt_and_fail(guard, "192.0.2.9")
        clock.advance(60)
    text = log_text(events)
    assert "blocking 192.0.2.9 for 60 s after 1 failed logins" in text
    assert "released 192.0.2.9" in text


def test_guard_stop_cancels_release_timers() -> None:
    clock = Clock()
    guard = LoginGuard(clock, max_failures=1)
    attempt_and_fail(guard, "a")
    assert clock.getDelayedCalls()
    guard.stop()
    assert not clock.getDelayedCalls()


# The address a client is counted by.


def test_client_address_ignores_forwarded_for_unless_trusted() -> None:
    assert client_address("127.0.0.1", "203.0.113.5", trust_proxy=False) == "127.0.0.1"
    assert client_address("127.0.0.1", "203.0.113.5", trust_proxy=True) == "203.0.113.5"
    # Only the last entry is the proxy's own; the client wrote the others.
    assert client_address("127.0.0.1", "1.2.3.4, 203.0.113.5", trust_proxy=True) == "203.0.113.5"
    assert client_address("127.0.0.1", "2001:db8::1", trust_proxy=True) == "2001:db8::1"
    assert client_address("127.0.0.1", "garbage", trust_proxy=True) == "127.0.0.1"
    assert client_address("127.0.0.1", None, trust_proxy=True) == "127.0.0.1"


def test_connection_counter() -> None:
    counter = ConnectionCounter(2)
    assert counter.acquire("a") and counter.acquire("a")
    assert not counter.acquire("a")
    assert counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")
    unlimited = ConnectionCounter(0)
    assert all(unlimited.acquire("a") for _ in range(10000))


# SessionTimer, on a Clock.


class Timed:
    def __init__(self, idle: float, auth: float) -> None:
        self.clock = Clock()
        self.authenticated = False
        self.closed: list[tuple[int, str]] = []
        self.timer = SessionTimer(self.clock, idle=idle, auth=auth, authenticated=lambda: self.authenticated,
                                  close=lambda code, reason: self.closed.append((code, reason)))
        self.timer.start()


def test_idle_timeout_closes_a_silent_connection() -> None:
    t = Timed(idle=1800, auth=0)
    t.clock.advance(1799)
    assert t.closed == []
    t.clock.advance(1)
    assert t.closed == [(CLOSE_NORMAL, "idle: no message for 1800 seconds")]
    assert not t.clock.getDelayedCalls()


def test_idle_timeout_counts_from_the_last_message() -> None:
    t = Timed(idle=1800, auth=0)
    for _ in range(10):
        t.clock.advance(1000)
        t.timer.activity()
    assert t.closed == []
    t.clock.advance(1799)
    assert t.closed == []
    t.clock.advance(1)
    assert len(t.closed) == 1


def test_auth_timeout_closes_an_unauthenticated_connection() -> None:
    t = Timed(idle=1800, auth=30)
    t.timer.activity()
    t.clock.advance(30)
    assert t.closed == [(CLOSE_POLICY_VIOLATION, "not authenticated within 30 seconds")]
    assert not t.clock.getDelayedCalls(), "no idle close after that"


def test_auth_timeout_spares_an_authenticated_connection() -> None:
    t = Timed(idle=1800, auth=30)
    t.clock.advance(10)
    t.authenticated = True
    t.clock.advance(1000)
    assert t.closed == []
    t.timer.stop()
    assert not t.clock.getDelayedCalls()


def test_timeouts_of_zero_never_fire() -> None:
    t = Timed(idle=0, auth=0)
    assert not t.clock.getDelayedCalls()


# The Authenticator with a guard: a blocked address never reaches the checker.


def make_auth(tmp_path: Any, **guard: Any) -> tuple[SyncClock, Authenticator]:
    clock = SyncClock()
    path = str(tmp_path / "users")
    write_users(path, {"alice": UserEntry("alice", FULL, cheap_hash("pw"))})
    checker = UsersFileChecker(clock, path)
    checker.load()
    return clock, Authenticator(clock, checker, guard=LoginGuard(clock, **guard))


def test_authenticator_counts_failures_and_stops_checking_when_blocked(tmp_path: Any) -> None:
    clock, auth = make_auth(tmp_path, max_failures=2)
    auth.login("alice", "pw", "10.1.1.1")
    assert clock.pool.calls == 1
    for _ in range(2):
        f = auth.login("alice", "wrong", "10.1.1.1").result
        f.trap(LoginFailed)
    assert clock.pool.calls == 3
    for call in (lambda: auth.login("alice", "pw", "10.1.1.1"), lambda: auth.login_cached("alice", "pw", "10.1.1.1")):
        f = call().result
        assert isinstance(f, Failure) and f.check(AddressBlocked)
        f.trap(AddressBlocked)
    assert clock.pool.calls == 3, "no password is checked for a blocked address"
    user = auth.login("alice", "pw", "10.1.1.2").result
    assert user == User("alice", FULL), "other addresses are not affected"


def test_cached_basic_login_resets_the_count(tmp_path: Any) -> None:
    clock, auth = make_auth(tmp_path, max_failures=2)
    auth.login_cached("alice", "pw", "a")
    auth.login_cached("alice", "wrong", "a").result.trap(LoginFailed)
    assert auth.guard.failures("a") == 1
    auth.login_cached("alice", "pw", "a")  # answered from the cache
    assert auth.guard.failures("a") == 0


def test_lone_surrogates_are_a_failed_login_not_a_crash(tmp_path: Any) -> None:
    clock, auth = make_auth(tmp_path)
    auth.login("alice\ud800", "pw", "a").result.trap(LoginFailed)
    auth.login_cached("alice", "pw\udfff", "a").result.trap(LoginFailed)


def test_token_store_keeps_no_token_in_memory() -> None:
    store = TokenStore(Clock(), ttl=900)
    token = store.issue(User("alice", FULL))
    assert token not in repr(store._tokens)
    assert token.encode() not in b"".join(store._tokens)
    assert all(len(key) == 32 for key in store._tokens)
    assert store.use(token) == User("alice", FULL)
    with pytest.raises(LoginFailed):
        store.use(token[:-1] + ("A" if token[-1] != "A" else "B"))


# JSON limits.


def test_json_depth_and_string_limits() -> None:
    nested: Any = "x"
    for _ in range(8):
        nested = [nested]
    decode_json(json.dumps(nested).encode(), max_depth=9)
    with pytest.raises(RPCError) as info:
        decode_json(json.dumps(nested).encode(), max_depth=8)
    assert info.value.code == 400 and "deeper than 8" in info.value.detail
    decode_json(json.dumps({"k": "x" * 100}).encode(), max_string=100)
    for value in ({"k": "x" * 101}, {"x" * 101: 1}, [[{"a": ["x" * 101]}]]):
        with pytest.raises(RPCError) as info:
            decode_json(json.dumps(value).encode(), max_string=100)
        assert info.value.code == 400 and "string of 101 characters" in info.value.detail
    with pytest.raises(RPCError) as info:
        decode_json(b"[" * 100000 + b"]" * 100000)
    assert info.value.code == 400


# Options.


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(["--state-dir", "/nonexistent-state", *argv])
    return options


def test_security_option_defaults() -> None:
    options = parse()
    expected = {
        "max-failed-logins": 5, "failed-login-window": 600.0, "block-seconds": 3600.0, "trust-proxy": 0,
        "idle-timeout": 1800.0, "auth-timeout": 30.0, "auth": "users", "full-group": "wheel",
        "read-group": "operator", "pam-service": "login", "tls-cert": None, "tls-key": None,
        "max-pending": 10000, "max-jobs-per-run": 1000, "max-chain": 256, "max-connections-per-address": 2000,
        "max-json-depth": 32, "max-string-chars": 65536,
    }
    assert {key: options[key] for key in expected} == expected
    assert options["ws"].startswith("tcp:") and options["rest"].startswith("tcp:")


@pytest.mark.parametrize(("argv", "needle"), [
    (["--max-failed-logins", "0"], "--max-failed-logins '0' is out of range"),
    (["--max-failed-logins", "many"], "--max-failed-logins 'many' is not a whole number"),
    (["--block-seconds", "-1"], "--block-seconds '-1' is out of range"),
    (["--idle-timeout", "soon"], "--idle-timeout 'soon' is not a number"),
    (["--auth-timeout", "nan"], "--auth-timeout 'nan' is out of range"),
    (["--max-pending", "0"], "--max-pending '0' is out of range"),
    (["--max-chain", "1.5"], "--max-chain '1.5' is not a whole number"),
    (["--max-json-depth", "2"], "--max-json-depth '2' is out of range"),
    (["--auth", "ldap"], "--auth 'ldap': choose one of users, system"),
    (["--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
])
def test_security_option_errors(argv: list[str], needle: str) -> None:
    with pytest.raises(usage.UsageError) as info:
        parse(*argv)
    assert needle in str(info.value)


def test_tls_shortcut_turns_tcp_endpoints_into_ssl(tmp_path: Any) -> None:
    cert = str(tmp_path / "my cert:1.pem")
    options = parse("--tls-cert", cert, "--ws", "tcp:8443:interface=0.0.0.0", "--rest", "unix:/run/x.sock")
    escaped = cert.replace(":", "\\:")
    assert options["ws"] == f"ssl:8443:interface=0.0.0.0:privateKey={escaped}:certKey={escaped}"
    assert options["rest"] == "unix:/run/x.sock"
    options = parse("--tls-cert", "/c.pem", "--tls-key", "/k.pem")
    assert options["ws"] == "ssl:12150:interface=127.0.0.1:privateKey=/k.pem:certKey=/c.pem"
    assert options["rest"] == "ssl:12151:interface=127.0.0.1:privateKey=/k.pem:certKey=/c.pem"


# Startup refuses state that others could write.


def make_service_error(tmp_path: Any, *argv: str) -> str:
    options = tap.Options()
    options.parseOptions(["--ws", "tcp:0:interface=127.0.0.1", "--rest", "tcp:0:interface=127.0.0.1", *argv])
    with pytest.raises(SystemExit) as info:
        tap.makeService(options, reactor)
    message = str(info.value.code)
    assert "\n" not in message, "one line"
    return message


def test_world_writable_state_dir_refused(tmp_path: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)  # noqa: S103 (the point of the test)
    message = make_service_error(tmp_path, "--state-dir", str(state))
    assert f"{state} is writable by group or others; fix with chmod go-w" in message


def test_group_writable_users_file_refused(tmp_path: Any) -> None:
    users = tmp_path / "users"
    write_users(str(users), {"alice": UserEntry("alice", FULL, cheap_hash("pw"))})
    os.chmod(users, 0o660)
    message = make_service_error(tmp_path, "--state-dir", str(tmp_path / "state"), "--users", str(users))
    assert f"{users} is writable by group or others" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_users_file_of_another_user_refused(tmp_path: Any) -> None:
    users = tmp_path / "users"
    write_users(str(users), {"alice": UserEntry("alice", FULL, cheap_hash("pw"))})
    os.chown(users, 65534, 65534)
    message = make_service_error(tmp_path, "--state-dir", str(tmp_path / "state"), "--users", str(users))
    assert "belongs to uid 65534" in message and "chown" in message


def test_users_file_made_writable_later_is_not_reloaded(tmp_path: Any) -> None:
    clock = SyncClock()
    path = tmp_path / "users"
    write_users(str(path), {"alice": UserEntry("alice", FULL, cheap_hash("pw"))})
    checker = UsersFileChecker(clock, str(path), poll_seconds=1)
    checker.load()
    checker.start()
    write_users(str(path), {"mallory": UserEntry("mallory", FULL, cheap_hash("pw"))})
    os.chmod(path, 0o666)  # noqa: S103
    with captured_log() as events:
        clock.advance(1)
    assert set(checker.users) == {"alice"}
    assert "writable by group or others" in log_text(events)
    os.chmod(path, 0o600)
    clock.advance(1)
    assert set(checker.users) == {"mallory"}
    checker.stop()


@ensure
async def test_twistd_refuses_world_writable_state_dir_in_one_line(tmp_path: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o757)  # noqa: S103 (the point of the test)
    twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    out, err, code = await with_timeout(getProcessOutputAndValue(
        PYTHON, ["-c", twistd, "-n", "--pidfile=", "sysadm-dispatch", "--state-dir", str(state)],
        env=python_env(), path=str(tmp_path)), 60)
    text = (out + err).decode()
    assert code != 0
    assert f"{state} is writable by group or others; fix with chmod go-w" in text
    assert "Traceback" not in text


# Failed-login blocking, for real.


def count_checks(server: Server) -> tuple[Counter, Counter]:
    """Count how often the password store and the token store are consulted."""
    return Counter(server.router.auth.checker, "requestAvatarId"), Counter(server.router.auth.tokens, "use")


@ensure
async def test_failed_logins_over_both_transports_block_the_address(make_server: Any) -> None:
    server = await make_server("--max-failed-logins", "3")
    _, body, _ = await server.rest({"username": "admin", "password": server.admin_password}, path="/rpc/auth",
                                   auth=None)
    token = body["args"][0]
    client = await server.ws(login=None)
    passwords, tokens = count_checks(server)
    with captured_log() as events:
        assert (await client.login("admin", "wrong-1"))["args"]["code"] == 401
        status, _, _ = await server.rest({"action": "list"}, auth=("admin", "wrong-2"))
        assert status == 401
        status, _, _ = await server.rest({"username": "nobody", "password": "wrong-3"}, path="/rpc/auth", auth=None)
        assert status == 401
    assert passwords.calls == 3
    assert "blocking 127.0.0.1 for 3600 s after 3 failed logins" in log_text(events)

    # Blocked: every request answers 403, and no password or token is looked at.
    reply = await client.login("admin", server.admin_password)
    assert reply["args"]["code"] == 403 and reply["args"]["message"] == "Forbidden"
    assert "too many failed logins from 127.0.0.1" in reply["args"]["detail"]
    assert (await client.call("identify"))["args"]["code"] == 403
    assert (await client.call("auth_token", {"token": token}))["args"]["code"] == 403
    client.send_raw(b"{broken")
    assert (await client.next_unmatched())["args"]["code"] == 403
    other = await server.ws(login=None)
    assert (await other.call("dispatcher", {"action": "list"}))["args"]["code"] == 403
    for kwargs in ({}, {"auth": None, "headers": {"Authorization": f"Bearer {token}"}},
                   {"path": "/rpc/identify", "auth": None}, {"method": "GET"}):
        status, body, _ = await server.rest({"action": "list"}, **kwargs)
        assert status == 403 and body["args"]["code"] == 403, kwargs
    assert passwords.calls == 3
    assert tokens.calls == 0
    # auth_clear keeps its rule: no reply.
    other.send({"namespace": "rpc", "name": "auth_clear", "id": "c", "args": {}})
    assert (await other.call("identify", id="after"))["id"] == "after"


@ensure
async def test_block_is_released_after_block_seconds(make_server: Any) -> None:
    server = await make_server("--max-failed-logins", "1", "--block-seconds", "1")
    client = await server.ws(login=None)
    with captured_log() as events:
        blocked_at = reactor.seconds()  # or a little before
        assert (await client.login("admin", "wrong"))["args"]["code"] == 401
        assert (await client.login("admin", server.admin_password))["args"]["code"] == 403
        await poll(lambda: "released 127.0.0.1" in log_text(events), 10)
    assert reactor.seconds() - blocked_at >= 0.95
    reply = await client.login("admin", server.admin_password)
    assert reply["name"] == "response"


@ensure
async def test_successful_login_resets_the_count(make_server: Any) -> None:
    server = await make_server("--max-failed-logins", "3")
    client = await server.ws(login=None)
    for password in ("bad", "bad", server.admin_password, "bad", "bad"):
        await client.login("admin", password)
    status, _, _ = await server.rest({"action": "list"})  # Basic auth with the right password
    assert status == 200
    assert not server.router.auth.guard.is_blocked("127.0.0.1")


@ensure
async def test_a_burst_of_guesses_gets_no_more_checks_than_the_limit(make_server: Any) -> None:
    server = await make_server("--max-failed-logins", "3")
    client = await server.ws(login=None)
    passwords, _ = count_checks(server)
    for i in range(20):
        client.send({"namespace": "rpc", "name": "auth", "id": f"g{i}", "args": {"username": "admin",
                                                                                  "password": f"guess-{i}"}})
    replies = [await client.next_unmatched() for _ in range(20)]
    codes = [r["args"]["code"] for r in replies]
    assert [r["id"] for r in replies] == [f"g{i}" for i in range(20)]
    assert codes.count(401) == 3 and codes.count(403) == 17
    assert passwords.calls == 3


@ensure
async def test_forwarded_for_is_ignored_without_trust_proxy(make_server: Any) -> None:
    server = await make_server("--max-failed-logins", "2")
    for forwarded in ("203.0.113.1", "203.0.113.2"):
        status, _, _ = await server.rest({"action": "list"}, auth=("admin", "bad"),
                                         headers={"X-Forwarded-For": forwarded})
        assert status == 401
    # Both failures counted against the real peer, whatever the header said.
    status, _, _ = await server.rest({"action": "list"}, headers={"X-Forwarded-For": "203.0.113.3"})
    assert status == 403
    assert server.router.auth.guard.is_blocked("127.0.0.1")


@ensure
async def test_trust_proxy_counts_the_forwarded_address(make_server: Any) -> None:
    server = await make_server("--max-failed-logins", "2", "--trust-proxy", "--max-connections-per-address", "1")
    for _ in range(2):
        status, _, _ = await server.rest({"action": "list"}, auth=("admin", "bad"),
                                         headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
        assert status == 401
    guard = server.router.auth.guard
    assert guard.is_blocked("203.0.113.7") and not guard.is_blocked("127.0.0.1")
    status, _, _ = await server.rest({"action": "list"}, headers={"X-Forwarded-For": "203.0.113.7"})
    assert status == 403
    status, _, _ = await server.rest({"action": "list"}, headers={"X-Forwarded-For": "203.0.113.8"})
    assert status == 200
    # WebSocket: the same address rules, and connections counted per forwarded address.
    blocked = await ws_connect(server.ws_port, headers={"X-Forwarded-For": "203.0.113.7"})
    server.clients.append(blocked)
    assert (await blocked.call("identify"))["args"]["code"] == 403
    fine = await ws_connect(server.ws_port, headers={"X-Forwarded-For": "203.0.113.8"})
    server.clients.append(fine)
    assert (await fine.login("admin", server.admin_password))["name"] == "response"
    with pytest.raises(Refused) as info:
        await ws_connect(server.ws_port, headers={"X-Forwarded-For": "203.0.113.8"})
    assert "429" in str(info.value) and "203.0.113.8" in str(info.value)


# Idle and authentication timeouts, for real.


@ensure
async def test_idle_websocket_is_closed(make_server: Any) -> None:
    server = await make_server("--idle-timeout", "0.6")
    start = reactor.seconds()
    quiet = await server.ws()  # its last message: the login
    busy = await server.ws()
    await deferLater(0.3)
    assert (await busy.call("identify"))["name"] == "response"
    code = await with_timeout(quiet.lost, 10)
    assert code == 1000
    assert reactor.seconds() - start >= 0.55
    assert not busy.lost.called, "a message postpones the idle close"
    assert await with_timeout(busy.lost, 10) == 1000


class _Silent(Protocol):
    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@ensure
async def test_idle_rest_connection_is_closed(make_server: Any) -> None:
    server = await make_server("--idle-timeout", "0.5")
    start = reactor.seconds()
    protocol = _Silent()
    await with_timeout(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.rest_port), protocol))
    await with_timeout(protocol.lost, 10)
    assert reactor.seconds() - start >= 0.45


@ensure
async def test_unauthenticated_websocket_is_closed_after_auth_timeout(make_server: Any) -> None:
    server = await make_server("--auth-timeout", "0.5")
    start = reactor.seconds()
    anonymous = await server.ws(login=None)
    assert (await anonymous.call("identify"))["name"] == "response"  # a message is not a login
    authenticated = await server.ws()
    code = await with_timeout(anonymous.lost, 10)
    assert code == 1008
    assert reactor.seconds() - start >= 0.45
    assert (await authenticated.call("dispatcher", {"action": "list"}))["name"] == "response"


# Per-address connection limit, for real.


@ensure
async def test_connections_per_address_are_limited(make_server: Any) -> None:
    server = await make_server("--max-connections-per-address", "3")
    clients = [await server.ws(login=None) for _ in range(3)]
    with pytest.raises(Refused) as info:
        await ws_connect(server.ws_port)
    assert "429" in str(info.value) and "too many connections from 127.0.0.1 (limit 3)" in str(info.value)
    await clients[0].close()
    factory = server.service.getServiceNamed("ws").factory
    await poll(lambda: factory.connections.count("127.0.0.1") == 2)
    again = await ws_connect(server.ws_port)
    server.clients.append(again)
    assert (await again.call("identify"))["name"] == "response"


@ensure
async def test_two_hundred_subscribers_from_one_address(server: Server) -> None:
    _, body, _ = await server.rest({"username": "admin", "password": server.admin_password}, path="/rpc/auth",
                                   auth=None)
    token = body["args"][0]
    clients = [await server.ws(login=None) for _ in range(200)]
    for client in clients:
        client.send({"namespace": "rpc", "name": "auth_token", "id": "t", "args": {"token": token}})
        client.send({"namespace": "events", "name": "subscribe", "id": "s", "args": ["dispatcher"]})
    for client in clients:
        assert (await client.next_unmatched())["name"] == "response"
        assert (await client.next_unmatched())["args"] == {"subscribe": "dispatcher"}
    await server.run({"for-all": "true"})
    for client in clients:
        while (event := await client.next_event())["args"]["state"] != "finished":
            pass
        assert event["args"]["process_id"] == "for-all"


# Limits on what requests may ask, for real.


@ensure
async def test_three_hundred_jobs_in_flight_with_default_limits(server: Server) -> None:
    ids = await server.run({"jobs": [{"id": f"j{i}", "commands": "sleep 30", "queue": "pkg_queue"}
                                     for i in range(300)]})
    assert len(ids) == 300
    _, body, _ = await server.rest({"action": "list"})
    assert len(body["args"]["jobs"]["pkg_queue"]) == 300
    _, body, _ = await server.rest({"action": "kill", "job_id": ids})
    assert len(body["args"]["killed"]["jobs"]) == 300


@ensure
async def test_max_pending_answers_503_on_both_transports(make_server: Any) -> None:
    server = await make_server("--max-pending", "2")
    for i in range(3):  # one runs, two wait
        await server.run({"jobs": [{"id": f"p{i}", "commands": "sleep 30", "queue": "pkg_queue"}]})
    status, body, _ = await server.rest({"action": "run", "jobs": [{"id": "more", "commands": "true",
                                                                     "queue": "pkg_queue"}]})
    assert status == 503 and body["args"]["message"] == "Service Unavailable"
    assert "limit 2" in body["args"]["detail"]
    client = await server.ws()
    reply = await client.call("dispatcher", {"action": "run", "more": "true"})
    assert reply["args"]["code"] == 503
    assert "more" not in server.dispatcher.jobs


@ensure
async def test_max_jobs_per_run_and_max_chain(make_server: Any) -> None:
    server = await make_server("--max-jobs-per-run", "3", "--max-chain", "2")
    status, body, _ = await server.rest({"action": "run", "a": "true", "b": "true", "c": "true", "d": "true"})
    assert status == 400 and "at most 3 jobs" in body["args"]["detail"]
    status, body, _ = await server.rest({"action": "run", "jobs": [{"commands": "true"}] * 4})
    assert status == 400 and "at most 3 jobs" in body["args"]["detail"]
    status, body, _ = await server.rest({"action": "run", "chain": ["true", "true", "true"]})
    assert status == 400 and "at most 2 commands" in body["args"]["detail"] and "'chain'" in body["args"]["detail"]
    assert server.dispatcher.jobs == {}
    ids = await server.run({"a": ["true", "true"], "b": "true", "c": "true"})
    assert ids == ["a", "b", "c"]


@ensure
async def test_json_depth_and_string_limits_on_both_transports(make_server: Any) -> None:
    server = await make_server("--max-json-depth", "8", "--max-string-chars", "100")
    deep: Any = {"action": "list"}
    for _ in range(8):
        deep = {"x": deep}
    status, body, _ = await server.rest(deep)
    assert status == 400 and "deeper than 8 levels" in body["args"]["detail"]
    status, body, _ = await server.rest({"action": "list", "pad": "x" * 101})
    assert status == 400 and "string of 101 characters, more than the limit of 100" in body["args"]["detail"]
    ids = await server.run({"jobs": [{"id": "i" * 100, "commands": "true"}]})
    assert ids == ["i" * 100]
    client = await server.ws()
    # Too deep or too long to be read: the id cannot be echoed.
    client.send({"namespace": "rpc", "name": "dispatcher", "id": "deep", "args": deep})
    reply = await client.next_unmatched()
    assert reply["args"]["code"] == 400 and "deeper" in reply["args"]["detail"]
    client.send({"namespace": "rpc", "name": "dispatcher", "id": "long", "args": {"action": "list", "y" * 101: 1}})
    reply = await client.next_unmatched()
    assert reply["args"]["code"] == 400 and "string of 101" in reply["args"]["detail"]
    assert (await client.call("dispatcher", {"action": "list"}))["name"] == "response"


@implementer(IBodyProducer)
class _Chunked:
    """A body of unknown length, sent chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, size: int) -> None:
        self.size = size

    def startProducing(self, consumer: Any) -> Deferred[None]:
        chunk = b"x" * 65536
        for _ in range(self.size // len(chunk)):
            consumer.write(chunk)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@ensure
async def test_oversized_chunked_body_is_413_and_not_kept(make_server: Any) -> None:
    server = await make_server("--max-message-bytes", "4096")
    response = await with_timeout(treq.request("PUT", server.rest_url + "/rpc/dispatcher", data=_Chunked(4 << 20),
                                               auth=("admin", server.admin_password), pool=server.pool))
    body = json.loads(await treq.content(response))
    assert response.code == 413 and "4194304 bytes, more than the limit of 4096" in body["args"]["detail"]
    status, _, _ = await server.rest({"action": "list"})
    assert status == 200


# Secrets stay out of logs and replies.


@ensure
async def test_passwords_and_tokens_never_logged_or_echoed(server: Server) -> None:
    wrong = "Wr0ng-p4ssw0rd-ZQX"
    right = server.admin_password
    seen: list[str] = []
    with captured_log() as events:
        status, body, _ = await server.rest({"action": "list"}, auth=("admin", wrong))
        seen.append(json.dumps(body))
        status, body, _ = await server.rest({"action": "list"}, auth=("admin", right))
        seen.append(json.dumps(body))
        status, body, _ = await server.rest({"username": "admin", "password": wrong}, path="/rpc/auth", auth=None)
        seen.append(json.dumps(body))
        status, body, _ = await server.rest({"username": "admin", "password": right}, path="/rpc/auth", auth=None)
        token = body["args"][0]
        status, body, _ = await server.rest({"action": "list"}, auth=None, headers={"Authorization": f"Bearer {token}"})
        seen.append(json.dumps(body))
        status, body, _ = await server.rest({"action": "list"}, auth=None,
                                            headers={"Authorization": f"Bearer {token}x"})
        seen.append(json.dumps(body))
        client = await server.ws(login=None)
        seen.append(json.dumps(await client.login("admin", wrong)))
        ws_token = (await client.login("admin", right))["args"][0]
        assert (await client.call("auth_token", {"token": token}))["name"] == "response"
        seen.append(json.dumps(await client.call("auth_token", {"token": token + "x"})))
        seen.append(json.dumps(await client.call("dispatcher", {"action": "run", "job": "echo done"})))
        await server.wait_finished("job")
        client.send({"namespace": "rpc", "name": "auth_clear", "id": "", "args": {}})
        seen.append(json.dumps(await client.call("dispatcher", {"action": "list"})))
    text = log_text(events)
    assert "failed login for 'admin' from 127.0.0.1" in text, "the log does say what happened"
    for secret in (wrong, right, token, ws_token, base64.b64encode(f"admin:{right}".encode()).decode()):
        assert secret not in text
        assert all(secret not in reply for reply in seen)


@ensure
async def test_rest_bodies_without_credentials_are_small_and_with_them_full_size(make_server: Any) -> None:
    server = await make_server()
    # A public request (a login) may carry only a small body: 413 from its headers.
    status, body, _ = await server.rest({"username": "admin", "password": "x" * 100}, path="/rpc/auth", auth=None,
                                        raw=json.dumps({"username": "admin", "pad": ["p" * 60000] * 2}).encode())
    assert status == 413 and "without valid credentials" in body["args"]["detail"], body
    # A good Basic login not seen before (checked while the body waits) and
    # a body of 500 kB: served in full.
    server.add_user("erin", "full", "erin-password")
    big = {"action": "list", "pad": ["q" * 50000] * 10}
    status, body, _ = await server.rest(big, auth=("erin", "erin-password"))
    assert status == 200, body
    # The same with a token.
    status, body, _ = await server.rest({"username": "erin", "password": "erin-password"}, path="/rpc/auth",
                                        auth=None)
    token = body["args"][0]
    status, body, _ = await server.rest(big, auth=None, headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body


@ensure
async def test_websocket_mounted_on_the_rest_site_is_not_counted_as_rest(make_server: Any) -> None:
    # The WebSocket factory served at /ws of the REST site (Autobahn's
    # WebSocketResource): an upgraded connection leaves the REST count, so
    # many of them do not lock REST clients out.
    from autobahn.twisted.resource import WebSocketResource
    from autobahn.twisted.websocket import WebSocketClientFactory
    from conftest import WSClient, _ClientProtocol
    from twisted.internet.endpoints import serverFromString
    from twisted.web.resource import Resource

    from sysadm_dispatch.transports.rest import RestAPI
    from sysadm_dispatch.transports.websocket import make_websocket_factory

    server = await make_server()
    api = RestAPI(server.router)
    site = api.site(max_connections_per_address=3, request_timeout=30)
    root = Resource()
    root.putChild(b"rpc", api.resource())
    ws = make_websocket_factory(server.router)
    root.putChild(b"ws", WebSocketResource(ws))
    site.resource = root
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    clients = []
    try:
        for _ in range(5):
            client = WSClient()
            factory = WebSocketClientFactory(f"ws://127.0.0.1:{port.getHost().port}/ws")
            factory.protocol = _ClientProtocol
            factory.opened = Deferred()
            factory.client = client
            await with_timeout(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(factory))
            client.protocol = await with_timeout(factory.opened)
            clients.append(client)
            assert (await client.login("admin", server.admin_password))["name"] == "response"
        assert site.total == 0
    finally:
        for client in clients:
            await client.close()
        await port.stopListening()
