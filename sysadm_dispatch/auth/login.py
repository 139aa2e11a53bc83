"""
Who is asking and what they may do: the users file, password hashing,
tokens with sliding expiry, and roles, on ``twisted.cred``.

Users file: one user per line, ``name:role:hash``, where role is ``full``
(may run and kill) or ``read`` (may look), and hash is a salted scrypt hash.
Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import hmac
import os
import re
import secrets
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from twisted.cred import credentials as cred_credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .blocking import AddressBlocked, LoginGuard

log = Logger()

FULL = "full"
READ = "read"
ROLES = (FULL, READ)

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}


class IUser(Interface):
    """The avatar interface: an authenticated user."""


@implementer(IUser)
@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def may_write(self) -> bool:
        return self.role == FULL


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def hash_password(password: str) -> str:
    """A salted scrypt hash in the form ``scrypt$n$r$p$salt$hash``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Check a password against a hash from ``hash_password``; slow on purpose."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected),
            maxmem=128 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def map_big_blocks(threshold: int = 4 << 20) -> None:
    """
    With glibc, serve every allocation of ``threshold`` bytes or more by a
    mapping of its own, given back to the system when freed.  A password
    check (scrypt) allocates 16 MiB; by default glibc raises its threshold
    to the size of the first such block freed, serves the next ones from the
    heap of the thread that asks, and that heap keeps them for good, in each
    thread that ever checked a password.  (Output buffers, 1 MiB at most,
    stay below this threshold: mapping them would cost their speed.)
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, threshold)
    # Fixing one threshold fixes the other at its small default (128 KiB),
    # and the heap would then shrink and grow again around every 1 MiB read
    # of output: keep what glibc would have kept.
    mallopt(m_trim_threshold, 2 * threshold)


class UsersFileError(Exception):
    pass


@dataclass(frozen=True)
class UserEntry:
    name: str
    role: str
    password_hash: str


def read_users(path: str) -> dict[str, UserEntry]:
    """Parse a users file; raises ``UsersFileError`` naming the bad line."""
    users: dict[str, UserEntry] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":")
            if len(parts) != 3 or not valid_name(parts[0]) or parts[1] not in ROLES:
                raise UsersFileError(f"{path}, line {number}: expected name:role:hash with role full or read")
            users[parts[0]] = UserEntry(*parts)
    return users


def write_users(path: str, users: Mapping[str, UserEntry]) -> None:
    """Replace the users file atomically, readable by its owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# sysadm-dispatch users: name:role:hash (role is full or read)\n")
            for entry in users.values():
                f.write(f"{entry.name}:{entry.role}:{entry.password_hash}\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def ensure_users_file(users_path: str, password_path: str) -> str | None:
    """
    On first run, create the users file with one full user ``admin`` and a
    random password, written to ``password_path`` (mode 0600).  Returns the
    password file's path when it did so.
    """
    if os.path.exists(users_path):
        return None
    password = secrets.token_urlsafe(18)
    # The password file first: should writing it fail, the next start tries
    # again instead of finding a users file whose password nobody knows.
    fd = os.open(password_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.chmod(password_path, 0o600)
    write_users(users_path, {"admin": UserEntry("admin", FULL, hash_password(password))})
    return password_path


@implementer(ICredentialsChecker)
class UsersFileChecker:
    """
    Checks usernames and passwords against the users file.  The file is
    read off the reactor thread, and read again when it changes, so users
    added with ``sysadm-dispatch user add`` can log in without a restart.
    """

    credentialInterfaces = (cred_credentials.IUsernamePassword,)

    def __init__(self, reactor: Any, path: str, poll_seconds: float = 2.0) -> None:
        self.reactor = reactor
        self.path = path
        #: Where passwords are checked: a small pool of the server's own
        #: (set by the server), else the reactor's.
        self.pool: Any = None
        self.users: dict[str, UserEntry] = {}
        self._stamp: tuple[int, ...] | None = None
        self._poll = LoopingCall(self._check_changed)
        self._poll.clock = reactor
        self._poll_seconds = poll_seconds
        self.changed = 0
        #: Called with the names of users whose password or role changed, or
        #: who are gone, each time the file is read again.
        self.on_users_changed: Callable[[set[str]], None] | None = None

    def load(self) -> None:
        """Read the users file now (at startup, before the reactor runs)."""
        self._stamp = self._file_stamp()
        self.users = read_users(self.path)

    def start(self) -> None:
        self._poll.start(self._poll_seconds, now=False)

    def reload(self) -> Deferred[None]:
        """Read the users file again now, changed or not (SIGHUP)."""
        self._stamp = None
        return self._check_changed()

    def stop(self) -> None:
        if self._poll.running:
            self._poll.stop()

    def _file_stamp(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        # Mode and owner too: a file refused for them is read again once fixed.
        return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)

    def _in_thread(self, f: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    @inlineCallbacks
    def _check_changed(self) -> Any:
        stamp = yield self._in_thread(self._file_stamp)
        if stamp == self._stamp:
            return
        try:
            users = yield self._in_thread(read_private_users, self.path)
        except (OSError, UsersFileError) as e:
            log.error("cannot read users file {path}: {error}; keeping the users read before", path=self.path,
                      error=str(e))
        else:
            old, self.users = self.users, users
            self.changed += 1
            log.info("users file {path} changed: {count} users", path=self.path, count=len(users))
            # A changed entry (password hash or role) or a removed one.
            changed = {name for name, entry in old.items() if users.get(name) != entry}
            if changed and self.on_users_changed is not None:
                self.on_users_changed(changed)
        self._stamp = stamp

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:  # type: ignore[override]  # never ANONYMOUS
        entry = self.users.get(credentials.username.decode("utf-8", "replace"))
        if entry is None:
            # Spend the same time as for a real user, so a reply's timing
            # does not tell which user names exist.
            entry = UserEntry("", READ, _DUMMY_HASH)
        password = credentials.password.decode("utf-8", "replace")

        def checked(ok: bool) -> bytes:
            if ok and entry.name:
                return entry.name.encode()
            raise UnauthorizedLogin()

        pool = self.pool if self.pool is not None else self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, pool, verify_password, password, entry.password_hash
                                 ).addCallback(checked)

    def role_of(self, name: str) -> str | None:
        entry = self.users.get(name)
        return entry.role if entry else None


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


@implementer(IRealm)
class Realm:
    """Turns an authenticated name into a ``User`` with its role."""

    def __init__(self, role_of: Any) -> None:
        self.role_of = role_of

    def requestAvatar(self, avatarId: bytes, mind: object, *interfaces: Any) -> tuple[Any, User, Any]:  # type: ignore[override]  # never ANONYMOUS
        name = avatarId.decode()
        role = self.role_of(name)
        if IUser not in interfaces or role is None:
            raise NotImplementedError("no such avatar")
        return IUser, User(name, role), lambda: None


class LoginFailed(Exception):
    """Bad credentials, or an unknown or expired token."""


class LoginBusy(Exception):
    """Too many logins are being checked at once; this one was not tried."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def __str__(self) -> str:
        return f"the server is checking {self.limit} logins already; try again in a moment"


@dataclass
class _Token:
    user: User
    expires: float


def _token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenStore:
    """
    Random tokens with sliding expiry, shared by every transport.

    Only a SHA-256 digest of each token is kept, and looked up by digest:
    how long a lookup takes can at most tell an attacker about the digest
    of what they sent, which says nothing about any real token (finding a
    token from its digest is a preimage attack on SHA-256), and the table
    in memory holds nothing a client could present.
    """

    def __init__(self, reactor: Any, ttl: float) -> None:
        self.reactor = reactor
        self.ttl = ttl
        self._tokens: dict[bytes, _Token] = {}
        self._next_sweep = 0.0

    def issue(self, user: User) -> str:
        token = secrets.token_urlsafe(32)  # 256 random bits
        self._tokens[_token_key(token)] = _Token(user, self.reactor.seconds() + self.ttl)
        self._sweep()
        return token

    def use(self, token: str) -> User:
        """The token's user; renews the token.  Raises ``LoginFailed``."""
        now = self.reactor.seconds()
        key = _token_key(token)
        entry = self._tokens.get(key)
        if entry is None or entry.expires <= now:
            self._tokens.pop(key, None)
            raise LoginFailed("unknown or expired token")
        entry.expires = now + self.ttl
        return entry.user

    def valid(self, token: str) -> bool:
        """Whether ``token`` would be accepted now (without renewing it)."""
        entry = self._tokens.get(_token_key(token))
        return entry is not None and entry.expires > self.reactor.seconds()

    def revoke(self, token: str) -> None:
        self._tokens.pop(_token_key(token), None)

    def revoke_user(self, name: str) -> None:
        for token in [t for t, e in self._tokens.items() if e.user.name == name]:
            del self._tokens[token]

    def __len__(self) -> int:
        return len(self._tokens)

    def _sweep(self) -> None:
        now = self.reactor.seconds()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(self.ttl, 60.0)
        for token in [t for t, e in self._tokens.items() if e.expires <= now]:
            del self._tokens[token]


class PasswordChecker(Protocol):
    """What ``Authenticator`` needs of a checker: the users file's, or the system's (PAM)."""

    credentialInterfaces: tuple[Any, ...]
    #: Bumped whenever users or roles may have changed (drops cached Basic logins).
    changed: int

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]: ...

    def role_of(self, name: str) -> str | None: ...

    def load(self) -> None: ...

    #: Set by the ``Authenticator``: called with the names of users whose
    #: password or role changed, or who are gone.
    on_users_changed: Callable[[set[str]], None] | None
    def reload(self) -> Any: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Authenticator:
    """
    Logins, tokens and the cache that keeps HTTP Basic auth (a password
    on every request) from costing a password hash every time.  Logins
    that name the client's address go through the ``LoginGuard``.
    """

    def __init__(
        self, reactor: Any, checker: PasswordChecker, token_ttl: float = 900.0, *, guard: LoginGuard | None = None,
        max_login_checks: int = 64,
    ) -> None:
        self.reactor = reactor
        #: Logins under way (waiting for their turn or being checked); more fail at once with ``LoginBusy``.
        self.max_login_checks = max_login_checks
        self.login_checks = 0
        self.checker = checker
        self.guard = guard if guard is not None else LoginGuard(reactor)
        realm: Any = Realm(checker.role_of)
        self.portal = Portal(realm, [cast(Any, checker)])
        self.tokens = TokenStore(reactor, token_ttl)
        self._cache_key = os.urandom(32)
        self._basic_cache: dict[bytes, tuple[User, float, int]] = {}
        #: Called with the names of users whose sessions must end now (the
        #: transports that hold sessions listen here).
        self.revocation_observers: list[Callable[[set[str]], None]] = []
        checker.on_users_changed = self.users_changed
        #: Password checks by ``(transport, result)``, result ``ok``, ``failed``
        #: or ``blocked`` (refused: the address is blocked); for the metrics.
        self.logins: Counter[tuple[str, str]] = Counter()

    def users_changed(self, names: set[str]) -> None:
        """
        These users' passwords or roles changed, or they are gone: their
        tokens stop working now, remembered Basic logins are forgotten, and
        the transports end their live sessions.
        """
        for name in names:
            self.tokens.revoke_user(name)
        self._basic_cache.clear()
        log.info("revoked the tokens and sessions of {names}: password or role changed, or removed",
                 names=", ".join(sorted(names)))
        for observer in list(self.revocation_observers):
            observer(names)

    def count_login(self, transport: str, result: str) -> None:
        if transport:
            self.logins[transport, result] += 1

    @property
    def token_ttl(self) -> float:
        return self.tokens.ttl

    def login(self, username: str, password: str, address: str | None = None, *,
              transport: str = "") -> Deferred[User]:
        """
        Check a username and password; fires with the ``User`` or fails with
        ``LoginFailed``.  With the client's ``address``, the attempt is
        counted, and fails with ``AddressBlocked`` (before any password is
        checked) while the address is blocked.  Beyond ``max_login_checks``
        logins under way, it fails at once with ``LoginBusy``: a flood of
        logins is refused, not queued without bound.
        """
        if self.max_login_checks and self.login_checks >= self.max_login_checks:
            return fail(LoginBusy(self.max_login_checks))
        self.login_checks += 1

        def ended(result: Any) -> Any:
            self.login_checks -= 1
            return result

        return self._guarded_login(username, password, address, transport).addBoth(ended)

    def _guarded_login(self, username: str, password: str, address: str | None, transport: str) -> Deferred[User]:
        if address is None:
            return self._login(username, password)
        guard = self.guard

        def check(_: None) -> Deferred[User]:
            return self._login(username, password).addCallbacks(succeeded, failed)

        def succeeded(user: User) -> User:
            guard.succeeded(address)
            self.count_login(transport, "ok")
            return user

        def failed(f: Any) -> Any:
            if f.check(LoginFailed):
                guard.failed(address)
                self.count_login(transport, "failed")
            else:
                guard.abandoned(address)
            return f

        def refused(f: Any) -> Any:
            if f.check(AddressBlocked):
                self.count_login(transport, "blocked")
            return f

        return guard.attempt(address).addCallbacks(check, refused)

    def _login(self, username: str, password: str) -> Deferred[User]:
        if not isinstance(username, str) or not isinstance(password, str):
            return fail(LoginFailed("username and password must be strings"))
        try:
            creds = cred_credentials.UsernamePassword(username.encode(), password.encode())
        except UnicodeEncodeError:
            # JSON can carry lone surrogates, which no user name or password holds.
            return fail(LoginFailed("bad username or password"))
        d = self.portal.login(cast(Any, creds), None, IUser)

        def done(result: tuple[Any, User, Any]) -> User:
            return result[1]

        def failed(f: Any) -> User:
            f.trap(UnauthorizedLogin, NotImplementedError)
            raise LoginFailed("bad username or password")

        return d.addCallbacks(done, failed)

    def login_cached(self, username: str, password: str, address: str | None = None, *,
                     transport: str = "") -> Deferred[User]:
        """``login``, remembering a success for a while (for HTTP Basic auth)."""
        if address is not None:
            try:
                self.guard.check(address)
            except AddressBlocked:
                self.count_login(transport, "blocked")
                return fail()
        key = hmac.new(self._cache_key, f"{username}\0{password}".encode("utf-8", "surrogatepass"),
                       hashlib.sha256).digest()
        now = self.reactor.seconds()
        hit = self._basic_cache.get(key)
        if hit is not None and hit[1] > now and hit[2] == self.checker.changed:
            if address is not None:
                self.guard.reset(address)
            return succeed(hit[0])

        def remember(user: User) -> User:
            if len(self._basic_cache) > 10000:
                self._basic_cache.clear()
            self._basic_cache[key] = (user, now + min(self.token_ttl, 300.0), self.checker.changed)
            return user

        return self.login(username, password, address, transport=transport).addCallback(remember)

    def issue_token(self, user: User) -> str:
        return self.tokens.issue(user)

    def use_token(self, token: str) -> User:
        user = self.tokens.use(token)
        refresh = getattr(self.checker, "refresh", None)
        if refresh is not None:
            # (System accounts: the user's groups are read again, off this
            # thread; a changed role ends the user's tokens and sessions.)
            refresh(user.name)
        role = self.checker.role_of(user.name)
        if role is None:
            # Removed from the users file since the token was issued.
            self.tokens.revoke(token)
            raise LoginFailed("the user no longer exists")
        return user if role == user.role else User(user.name, role)

    def revoke_token(self, token: str) -> None:
        self.tokens.revoke(token)


def check_private(path: str) -> None:
    """Refuse a file or directory that others may write to (or own, and so chmod)."""
    st = os.stat(path)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsersFileError(f"{path} is writable by group or others; fix with chmod go-w")
    if st.st_uid not in (0, os.geteuid()):
        raise UsersFileError(f"{path} belongs to uid {st.st_uid}, neither root nor the server's user; fix with chown")


def read_private_users(path: str) -> dict[str, UserEntry]:
    """``read_users``, refusing a file that others could have written."""
    check_private(path)
    return read_users(path)


#: The state directory of a server run as root (as a system service).
SYSTEM_STATE_DIR = "/var/lib/sysadm-dispatch"


def default_state_dir() -> str:
    """
    Where the server keeps its state when not told, and where the ``user``
    commands and the client look for it: ``$STATE_DIRECTORY`` (set by
    systemd's ``StateDirectory=``; its first entry), else
    ``$XDG_STATE_HOME/sysadm-dispatch``, else, for root,
    ``/var/lib/sysadm-dispatch``, and for anyone else
    ``~/.local/state/sysadm-dispatch``.
    """
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return os.path.join(xdg, "sysadm-dispatch")
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    return os.path.join(os.path.expanduser("~"), ".local", "state", "sysadm-dispatch")
