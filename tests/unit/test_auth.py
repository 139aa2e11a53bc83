"""
Unit tests for ``sysadm_dispatch.auth`` (users, tokens, checker, login): password hashing, the users file,
tokens with sliding expiry (on a ``Clock``), the Basic-auth cache and the
cred checker.

Password checks run in the reactor's thread pool.  Most tests here use a
``Clock`` whose "thread pool" runs the work at once on the calling thread,
so they need no reactor; the few that check the real thread hand-off use
pytest-twisted.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from security_helpers import SyncClock, cheap_hash
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sysadm_dispatch.auth import users as users_module
from sysadm_dispatch.auth.checker import UsersFileChecker, UsersFileWatch
from sysadm_dispatch.auth.login import Authenticator
from sysadm_dispatch.auth.tokens import TokenStore
from sysadm_dispatch.auth.users import (
    FULL,
    READ,
    LoginFailed,
    User,
    UserEntry,
    UsersFileError,
    check_private,
    default_state_dir,
    ensure_users_file,
    hash_password,
    read_users,
    verify_password,
    write_users,
)

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def real_hash() -> str:
    """One real (slow on purpose) hash, shared by the tests that need one."""
    return hash_password(PASSWORD)


def mode(path: Any) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# Hashing.


def test_hash_format(real_hash: str) -> None:
    scheme, n, r, p, salt, digest = real_hash.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert PASSWORD not in real_hash


def test_verify_right_and_wrong(real_hash: str) -> None:
    assert verify_password(PASSWORD, real_hash) is True
    assert verify_password(PASSWORD + " ", real_hash) is False
    assert verify_password("", real_hash) is False


def test_hashes_are_salted(real_hash: str) -> None:
    other = hash_password(PASSWORD)
    assert other != real_hash
    assert other.split("$")[4] != real_hash.split("$")[4]
    assert verify_password(PASSWORD, other)


def test_verify_uses_the_parameters_in_the_hash() -> None:
    assert verify_password("pw", cheap_hash("pw")) is True
    assert verify_password("pW", cheap_hash("pw")) is False
    assert verify_password("pâsswörd", cheap_hash("pâsswörd")) is True


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "garbage",
        "scrypt$16384$8$1$AAAA",  # too few fields
        "scrypt$16384$8$1$AAAA$AAAA$AAAA",  # too many fields
        "bcrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$x$8$1$AAAA$AAAA",
        "scrypt$3$8$1$AAAA$AAAA",  # n not a power of two
        "scrypt$16384$8$1$not base64!$AAAA",
        "scrypt$16384$8$1$AAAA$",  # empty digest
        "scrypt$16384$8$1$AAAA$@@@@",
        "scrypt$16384$8$1$é$AAAA",
        "scrypt$" + "9" * 40 + "$8$1$AAAA$AAAA",  # absurd cost
        "scrypt$16384$99999999999$1$AAAA$AAAA",
    ],
)
def test_verify_malformed_hash_is_false(encoded: str) -> None:
    assert verify_password("x", encoded) is False


# The users file.


def test_users_round_trip(tmp_path: Any) -> None:
    path = str(tmp_path / "users")
    users = {"alice": UserEntry("alice", FULL, cheap_hash("a")), "bob.b@x-y": UserEntry("bob.b@x-y", READ, "h")}
    write_users(path, users)
    assert read_users(path) == users
    assert verify_password("a", read_users(path)["alice"].password_hash)


def test_write_users_mode_0600(tmp_path: Any) -> None:
    path = tmp_path / "users"
    path.write_text("")
    os.chmod(path, 0o644)
    old_umask = os.umask(0)
    try:
        write_users(str(path), {"alice": UserEntry("alice", FULL, "h")})
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600


def test_write_users_creates_a_private_directory(tmp_path: Any) -> None:
    path = tmp_path / "new" / "users"
    write_users(str(path), {})
    assert read_users(str(path)) == {}
    assert mode(tmp_path / "new") & 0o077 == 0


def test_write_users_replaces_atomically(tmp_path: Any) -> None:
    path = tmp_path / "users"
    write_users(str(path), {"alice": UserEntry("alice", FULL, "h1")})
    before = os.stat(path).st_ino
    with open(path) as reader:  # a reader that opened the old file keeps seeing it whole
        write_users(str(path), {"bob": UserEntry("bob", READ, "h2")})
        assert "alice:full:h1" in reader.read()
    assert os.stat(path).st_ino != before, "the file must be replaced by rename, not rewritten in place"
    assert list(read_users(str(path))) == ["bob"]
    assert sorted(os.listdir(tmp_path)) == ["users"], "no temporary file may be left behind"


class _Exploding(dict):  # type: ignore[type-arg]
    def values(self) -> Iterator[UserEntry]:  # type: ignore[override]
        yield UserEntry("carol", FULL, "h3")
        raise RuntimeError("disk on fire")


def test_write_users_failure_keeps_the_old_file(tmp_path: Any) -> None:
    path = tmp_path / "users"
    write_users(str(path), {"alice": UserEntry("alice", FULL, "h1")})
    content = path.read_text()
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_users(str(path), _Exploding())
    assert path.read_text() == content
    assert sorted(os.listdir(tmp_path)) == ["users"]


def test_read_users_skips_comments_and_blank_lines(tmp_path: Any) -> None:
    path = tmp_path / "users"
    path.write_text("# comment\n\n   \n  alice:full:h1  \n#bob:read:h\nbob:read:h2\n")
    assert read_users(str(path)) == {"alice": UserEntry("alice", FULL, "h1"), "bob": UserEntry("bob", READ, "h2")}


@pytest.mark.parametrize(
    "bad",
    ["alice", "alice:full", "alice:admin:h", "alice:wheel:h", "al ice:full:h", ":full:h", "alice:full:h:x",
     "x" * 65 + ":full:h", "-alice:full:h"],
)
def test_read_users_bad_line_names_the_line(tmp_path: Any, bad: str) -> None:
    path = tmp_path / "users"
    path.write_text(f"# users\nok:read:h\n{bad}\n")
    with pytest.raises(UsersFileError) as info:
        read_users(str(path))
    assert "line 3" in str(info.value)
    assert str(path) in str(info.value)


def test_ensure_users_file_creates_admin(tmp_path: Any) -> None:
    users_path, password_path = str(tmp_path / "users"), str(tmp_path / "admin-password")
    assert ensure_users_file(users_path, password_path) == password_path
    users = read_users(users_path)
    assert list(users) == ["admin"] and users["admin"].role == FULL
    assert mode(users_path) == 0o600
    assert mode(password_path) == 0o600
    with open(password_path) as f:
        password = f.read()
    assert password.endswith("\n")
    password = password.strip()
    assert len(password) >= 16
    assert verify_password(password, users["admin"].password_hash)


def test_ensure_users_file_leaves_an_existing_file_alone(tmp_path: Any) -> None:
    users_path, password_path = tmp_path / "users", tmp_path / "admin-password"
    write_users(str(users_path), {"bob": UserEntry("bob", READ, "h")})
    content = users_path.read_text()
    assert ensure_users_file(str(users_path), str(password_path)) is None
    assert users_path.read_text() == content
    assert not password_path.exists()


def test_ensure_users_file_password_file_0600_even_if_it_existed(tmp_path: Any) -> None:
    password_path = tmp_path / "admin-password"
    password_path.write_text("old\n")
    os.chmod(password_path, 0o644)
    ensure_users_file(str(tmp_path / "users"), str(password_path))
    assert mode(password_path) == 0o600
    assert password_path.read_text() != "old\n"


def test_ensure_users_file_failure_does_not_lock_admin_out(tmp_path: Any) -> None:
    users_path = str(tmp_path / "users")
    password_dir = tmp_path / "not-yet"
    password_path = str(password_dir / "admin-password")
    with pytest.raises(OSError):
        ensure_users_file(users_path, password_path)  # e.g. the disk filled up
    password_dir.mkdir()
    created = ensure_users_file(users_path, password_path)  # the next start
    assert created == password_path, "no admin password was ever handed out"
    with open(password_path) as f:
        assert verify_password(f.read().strip(), read_users(users_path)["admin"].password_hash)


def test_check_private(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_text("")
    for ok in (0o600, 0o644, 0o400, 0o755):
        os.chmod(path, ok)
        check_private(str(path))
    for bad in (0o620, 0o602, 0o666, 0o660):
        os.chmod(path, bad)
        with pytest.raises(UsersFileError, match="writable by group or others"):
            check_private(str(path))
    directory = tmp_path / "d"
    directory.mkdir()
    os.chmod(directory, 0o777)  # noqa: S103 (the point of the test)
    with pytest.raises(UsersFileError) as info:
        check_private(str(directory))
    assert str(directory) in str(info.value)


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == str(tmp_path / "xdg" / "sysadm-dispatch")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == str(tmp_path / "home" / ".local" / "state" / "sysadm-dispatch")
    monkeypatch.setenv("XDG_STATE_HOME", "")
    assert default_state_dir() == str(tmp_path / "home" / ".local" / "state" / "sysadm-dispatch")


def test_default_state_dir_of_a_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    # Root: the system's place, not root's home.
    assert default_state_dir() == "/var/lib/sysadm-dispatch"
    # Under systemd (StateDirectory=), whoever the user is: its directory (the first, if several).
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/sysadm-dispatch-test:/var/lib/other")
    assert default_state_dir() == "/var/lib/sysadm-dispatch-test"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_state_dir() == "/var/lib/sysadm-dispatch-test"
    # An explicit XDG_STATE_HOME still counts for root.
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == str(tmp_path / "xdg" / "sysadm-dispatch")


# Tokens, on a Clock.


class TokenStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tokens = TokenStore(self.clock, ttl=900)
        self.alice = User("alice", FULL)

    def test_issue_and_use(self) -> None:
        token = self.tokens.issue(self.alice)
        self.assertEqual(self.tokens.use(token), self.alice)

    def test_unknown_token(self) -> None:
        self.assertRaises(LoginFailed, self.tokens.use, "nope")

    def test_expires_after_ttl_without_use(self) -> None:
        token = self.tokens.issue(self.alice)
        self.clock.advance(899.9)
        self.tokens.issue(User("bob", READ))  # another token's activity does not renew this one
        self.clock.advance(0.1)
        self.assertRaises(LoginFailed, self.tokens.use, token)
        self.assertEqual(len(self.tokens), 1, "the expired token is forgotten")

    def test_use_renews(self) -> None:
        token = self.tokens.issue(self.alice)
        for _ in range(10):
            self.clock.advance(899)
            self.assertEqual(self.tokens.use(token), self.alice)
        self.clock.advance(899)
        self.tokens.use(token)
        self.clock.advance(900)
        self.assertRaises(LoginFailed, self.tokens.use, token)

    def test_a_failed_use_does_not_renew(self) -> None:
        token = self.tokens.issue(self.alice)
        self.clock.advance(1000)
        self.assertRaises(LoginFailed, self.tokens.use, token)
        self.assertRaises(LoginFailed, self.tokens.use, token)

    def test_revoke(self) -> None:
        token = self.tokens.issue(self.alice)
        other = self.tokens.issue(self.alice)
        self.tokens.revoke(token)
        self.assertRaises(LoginFailed, self.tokens.use, token)
        self.assertEqual(self.tokens.use(other), self.alice)
        self.tokens.revoke("never issued")  # harmless

    def test_revoke_user(self) -> None:
        a1, a2 = self.tokens.issue(self.alice), self.tokens.issue(self.alice)
        b = self.tokens.issue(User("bob", READ))
        self.tokens.revoke_user("alice")
        self.assertRaises(LoginFailed, self.tokens.use, a1)
        self.assertRaises(LoginFailed, self.tokens.use, a2)
        self.assertEqual(self.tokens.use(b).name, "bob")

    def test_expired_tokens_are_swept(self) -> None:
        for _ in range(50):
            self.tokens.issue(self.alice)
        self.clock.advance(901)
        self.tokens.issue(self.alice)
        self.assertEqual(len(self.tokens), 1)

    def test_tokens_are_random_and_long(self) -> None:
        tokens = [self.tokens.issue(self.alice) for _ in range(200)]
        self.assertEqual(len(set(tokens)), 200)
        for token in tokens:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            self.assertGreaterEqual(len(raw) * 8, 128)
        # Each of the first 128 bits varies across tokens: no constant prefix, no counter.
        values = [int.from_bytes(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))[:16], "big") for t in tokens]
        always_set, ever_set = (1 << 128) - 1, 0
        for value in values:
            always_set &= value
            ever_set |= value
        self.assertEqual((always_set, ever_set), (0, (1 << 128) - 1))


# The Authenticator, with a Clock and a synchronous thread pool.


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = SyncClock()
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "users")
        write_users(self.path, {"alice": UserEntry("alice", FULL, cheap_hash("pw-a")),
                                "bob": UserEntry("bob", READ, cheap_hash("pw-b"))})
        self.checker = UsersFileChecker(self.clock, self.path)
        self.checker.load()
        self.auth = Authenticator(self.clock, self.checker, token_ttl=900)

    def rewrite(self, users: dict[str, UserEntry]) -> None:
        write_users(self.path, users)
        self.checker.load()
        self.checker.changed += 1

    def test_login(self) -> None:
        self.assertEqual(self.successResultOf(self.auth.login("alice", "pw-a")), User("alice", FULL))
        self.assertEqual(self.successResultOf(self.auth.login("bob", "pw-b")), User("bob", READ))
        self.assertFalse(User("bob", READ).may_write)
        self.assertTrue(User("alice", FULL).may_write)

    def test_login_failures(self) -> None:
        for username, password in [("alice", "pw-b"), ("nobody", "pw-a"), ("alice", "")]:
            self.failureResultOf(self.auth.login(username, password), LoginFailed)
        self.failureResultOf(self.auth.login(None, "x"), LoginFailed)  # type: ignore[arg-type]

    def test_use_token(self) -> None:
        token = self.auth.issue_token(User("alice", FULL))
        self.assertEqual(self.auth.use_token(token), User("alice", FULL))

    def test_use_token_of_removed_user(self) -> None:
        token = self.auth.issue_token(User("bob", READ))
        self.rewrite({"alice": self.checker.users["alice"]})
        self.assertRaises(LoginFailed, self.auth.use_token, token)
        # The token is gone for good, even if the user comes back.
        self.rewrite({**self.checker.users, "bob": UserEntry("bob", READ, cheap_hash("pw-b"))})
        self.assertRaises(LoginFailed, self.auth.use_token, token)

    def test_use_token_after_role_change(self) -> None:
        token = self.auth.issue_token(User("bob", READ))
        self.rewrite({**self.checker.users, "bob": UserEntry("bob", FULL, cheap_hash("pw-b"))})
        self.assertEqual(self.auth.use_token(token), User("bob", FULL))
        self.rewrite({**self.checker.users, "bob": UserEntry("bob", READ, cheap_hash("pw-b"))})
        self.assertEqual(self.auth.use_token(token), User("bob", READ))

    def test_token_expiry_through_authenticator(self) -> None:
        token = self.auth.issue_token(User("alice", FULL))
        self.clock.advance(899)
        self.auth.use_token(token)
        self.clock.advance(899)
        self.auth.use_token(token)
        self.clock.advance(900)
        self.assertRaises(LoginFailed, self.auth.use_token, token)
        other = self.auth.issue_token(User("alice", FULL))
        self.auth.revoke_token(other)
        self.assertRaises(LoginFailed, self.auth.use_token, other)

    def test_login_cached_remembers_a_success(self) -> None:
        pool = self.clock.pool
        self.assertEqual(self.successResultOf(self.auth.login_cached("alice", "pw-a")), User("alice", FULL))
        self.assertEqual(pool.calls, 1)
        for _ in range(5):
            self.assertEqual(self.successResultOf(self.auth.login_cached("alice", "pw-a")), User("alice", FULL))
        self.assertEqual(pool.calls, 1, "a cached login must not hash the password again")

    def test_login_cached_does_not_accept_another_password(self) -> None:
        self.successResultOf(self.auth.login_cached("alice", "pw-a"))
        self.failureResultOf(self.auth.login_cached("alice", "pw-b"), LoginFailed)
        self.failureResultOf(self.auth.login_cached("alice", "pw-a "), LoginFailed)
        self.failureResultOf(self.auth.login_cached("bob", "pw-a"), LoginFailed)

    def test_login_cached_does_not_remember_failures(self) -> None:
        pool = self.clock.pool
        for n in range(1, 4):
            self.failureResultOf(self.auth.login_cached("alice", "wrong"), LoginFailed)
            self.assertEqual(pool.calls, n)

    def test_login_cached_invalidated_when_users_file_changes(self) -> None:
        pool = self.clock.pool
        self.successResultOf(self.auth.login_cached("alice", "pw-a"))
        self.rewrite({**self.checker.users, "alice": UserEntry("alice", FULL, cheap_hash("new"))})
        self.failureResultOf(self.auth.login_cached("alice", "pw-a"), LoginFailed)
        self.assertEqual(pool.calls, 2)
        self.assertEqual(self.successResultOf(self.auth.login_cached("alice", "new")), User("alice", FULL))

    def test_login_cached_sees_a_role_change(self) -> None:
        self.successResultOf(self.auth.login_cached("bob", "pw-b"))
        self.rewrite({**self.checker.users, "bob": UserEntry("bob", FULL, cheap_hash("pw-b"))})
        self.assertEqual(self.successResultOf(self.auth.login_cached("bob", "pw-b")), User("bob", FULL))

    def test_login_cached_expires(self) -> None:
        pool = self.clock.pool
        self.successResultOf(self.auth.login_cached("alice", "pw-a"))
        self.clock.advance(299)
        self.successResultOf(self.auth.login_cached("alice", "pw-a"))
        self.assertEqual(pool.calls, 1)
        self.clock.advance(1)
        self.successResultOf(self.auth.login_cached("alice", "pw-a"))
        self.assertEqual(pool.calls, 2, "the cache keeps a success for at most 300 s")

    def test_users_file_change_is_picked_up_by_polling(self) -> None:
        self.checker.start()
        self.addCleanup(self.checker.stop)
        write_users(self.path, {"carol": UserEntry("carol", READ, cheap_hash("pw-c"))})
        self.clock.advance(2)
        self.assertEqual(self.checker.changed, 1)
        self.assertEqual(list(self.checker.users), ["carol"])
        self.assertEqual(self.successResultOf(self.auth.login("carol", "pw-c")), User("carol", READ))
        self.failureResultOf(self.auth.login("alice", "pw-a"), LoginFailed)
        self.clock.advance(2)
        self.assertEqual(self.checker.changed, 1, "an unchanged file is not read again")

    def test_the_watch_is_a_timer_service_that_a_parent_service_stops(self) -> None:
        self.assertIsInstance(self.checker.watch, TimerService)
        parent = MultiService()
        self.checker.watch.setServiceParent(parent)
        parent.startService()
        write_users(self.path, {"carol": UserEntry("carol", READ, cheap_hash("pw-c"))})
        self.clock.advance(2)
        self.assertEqual(list(self.checker.users), ["carol"])
        self.successResultOf(parent.stopService())
        write_users(self.path, {"dave": UserEntry("dave", READ, cheap_hash("pw-d"))})
        self.clock.advance(10)
        self.assertEqual(list(self.checker.users), ["carol"], "a stopped watch reads nothing")

    def test_stopping_the_watch_waits_for_a_look_under_way(self) -> None:
        looks: list[Deferred[None]] = []

        def held() -> Deferred[None]:
            looks.append(Deferred())
            return looks[-1]

        self.patch(self.checker, "check_changed", held)
        watch = UsersFileWatch(self.checker, self.clock, 2.0)
        watch.startService()
        self.assertEqual(looks, [], "the file was just read: the first look is one interval later")
        self.clock.advance(2)
        self.assertEqual(len(looks), 1)
        stopped = watch.stopService()
        self.assertNoResult(stopped)
        looks[0].callback(None)
        self.successResultOf(stopped)
        self.clock.advance(10)
        self.assertEqual(len(looks), 1)

    def test_broken_users_file_keeps_the_old_users(self) -> None:
        self.checker.start()
        self.addCleanup(self.checker.stop)
        with open(self.path, "w") as f:
            f.write("this is not a users file\n")
        self.clock.advance(2)
        self.assertEqual(self.checker.changed, 0)
        self.assertEqual(sorted(self.checker.users), ["alice", "bob"])
        self.successResultOf(self.auth.login("alice", "pw-a"))

    def test_unknown_user_costs_a_real_hash(self) -> None:
        # So that the time a failed login takes does not tell which names exist.
        costs: list[int] = []
        real_scrypt = hashlib.scrypt

        def counting(*args: Any, **kwargs: Any) -> bytes:
            costs.append(kwargs["n"] * kwargs["r"] * kwargs["p"])
            return real_scrypt(*args, **kwargs)

        real = hash_password("x")
        self.patch(users_module.hashlib, "scrypt", counting)
        self.checker.users["real"] = UserEntry("real", READ, real)
        self.failureResultOf(self.checker.requestAvatarId(UsernamePassword(b"real", b"wrong")), UnauthorizedLogin)
        self.failureResultOf(self.checker.requestAvatarId(UsernamePassword(b"ghost", b"wrong")), UnauthorizedLogin)
        self.assertEqual(len(costs), 2)
        self.assertEqual(costs[0], costs[1])


# The cred checker on the real reactor's thread pool.


@pytest.fixture
def checker(tmp_path: Any) -> UsersFileChecker:
    path = str(tmp_path / "users")
    write_users(path, {"alice": UserEntry("alice", FULL, cheap_hash("pw-a"))})
    c = UsersFileChecker(reactor, path)
    c.load()
    return c


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_right_password(checker: UsersFileChecker) -> None:
    assert await checker.requestAvatarId(UsernamePassword(b"alice", b"pw-a")) == b"alice"


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_wrong_password(checker: UsersFileChecker) -> None:
    with pytest.raises(UnauthorizedLogin):
        await checker.requestAvatarId(UsernamePassword(b"alice", b"pw-b"))


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_unknown_user(checker: UsersFileChecker) -> None:
    with pytest.raises(UnauthorizedLogin):
        await checker.requestAvatarId(UsernamePassword(b"mallory", b"pw-a"))
    # Nor does the dummy entry used for unknown names ever authenticate.
    with pytest.raises(UnauthorizedLogin):
        await checker.requestAvatarId(UsernamePassword(b"", b""))


@pytest_twisted.ensureDeferred
async def test_request_avatar_id_undecodable_bytes(checker: UsersFileChecker) -> None:
    with pytest.raises(UnauthorizedLogin):
        await checker.requestAvatarId(UsernamePassword(b"alice\xff", b"pw-a\xff"))
