"""
Logins on ``twisted.cred``: the realm that turns a name into a ``User``
with its role, and the ``Authenticator`` every transport logs in through
(tokens, the HTTP Basic cache, failed-login blocking, revocation).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.cred import credentials as cred_credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from .blocking import AddressBlocked, LoginGuard
from .tokens import TokenStore
from .users import IUser, LoginFailed, User

log = Logger()


@implementer(IRealm)
class Realm:
    """Turns an authenticated name into a ``User`` with its role."""

    def __init__(self, role_of: Callable[[str], str | None]) -> None:
        self.role_of = role_of

    def requestAvatar(self, avatarId: bytes, mind: object, *interfaces: Any) -> tuple[Any, User, Any]:  # type: ignore[override]  # never ANONYMOUS
        name = avatarId.decode()
        role = self.role_of(name)
        if IUser not in interfaces or role is None:
            raise NotImplementedError("no such avatar")
        return IUser, User(name, role), lambda: None


class LoginBusy(Exception):
    """Too many logins are being checked at once; this one was not tried."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def __str__(self) -> str:
        return f"the server is checking {self.limit} logins already; try again in a moment"


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

    def stop(self) -> Any: ...


class Authenticator:
    """
    Logins, tokens and the cache that keeps HTTP Basic auth (a password
    on every request) from costing a password hash every time.  Logins
    that name the client's address go through the ``LoginGuard``.
    """

    def __init__(
        self, reactor: IReactorTime, checker: PasswordChecker, token_ttl: float = 900.0, *,
        guard: LoginGuard | None = None, max_login_checks: int = 64,
    ) -> None:
        self.reactor = reactor
        #: Logins under way (waiting for their turn or being checked); more fail at once with ``LoginBusy``.
        self.max_login_checks = max_login_checks
        self.login_checks = 0
        self.checker = checker
        self.guard = guard if guard is not None else LoginGuard(reactor)
        self.portal = Portal(Realm(checker.role_of), [cast(ICredentialsChecker, checker)])
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
        d = self.portal.login(creds, None, IUser)

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
