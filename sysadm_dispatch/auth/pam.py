"""
System accounts (``--auth system``): passwords checked through PAM, roles
from Unix groups, as the original server did.  Members of the full group
(``wheel``) may run and kill, members of the read group (``operator``) may
look, and everyone else is refused.

PAM calls block (and a failed one may sleep on purpose), so they run in a
small thread pool of their own, never on the reactor thread and never
crowding out the reactor's shared pool.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Any

from twisted.cred import credentials as cred_credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..reactors import IClockFromThreads
from .users import FULL, READ, valid_name

log = Logger()


class SystemAuthError(Exception):
    """``--auth system`` cannot work here (no PAM binding); the message says what to install."""


def load_pam() -> Any:
    """The PAM binding (python-pam), or ``SystemAuthError`` saying how to get it."""
    try:
        import pam  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise SystemAuthError(
            "--auth system needs the python-pam package: pip install 'sysadm-dispatch[pam]'"
        ) from None
    return pam


def groups_of(username: str) -> set[str]:
    """The names of every group ``username`` belongs to, its primary group included (blocking)."""
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        return set()
    names = set()
    for gid in os.getgrouplist(username, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names


def role_from_groups(groups: set[str], full_group: str, read_group: str) -> str | None:
    if full_group in groups:
        return FULL
    if read_group in groups:
        return READ
    return None


@implementer(ICredentialsChecker)
class SystemChecker:
    """
    Checks usernames and passwords with PAM (service ``service``) and
    gives each user the role of the groups they are in.  A user's role is
    read again at each login, and in the background when one of its tokens
    is used (at most every ``refresh_seconds``); a changed role ends the
    user's tokens and sessions (``on_users_changed``).
    """

    #: At most one background reading of a user's groups per this many seconds.
    refresh_seconds = 5.0

    credentialInterfaces = (cred_credentials.IUsernamePassword,)

    def __init__(
        self,
        reactor: IClockFromThreads,
        *,
        service: str = "login",
        full_group: str = "wheel",
        read_group: str = "operator",
        threads: int = 4,
    ) -> None:
        self.reactor = reactor
        self.service = service
        self.full_group = full_group
        self.read_group = read_group
        self.changed = 0
        self.roles: dict[str, str] = {}
        self.on_users_changed: Any = None
        self._refreshed: dict[str, float] = {}
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="sysadm-dispatch-pam")
        self._pam: Any = None

    def load(self) -> None:
        """Find the PAM binding and say which of the two groups exist (at startup)."""
        self._pam = load_pam()
        for option, group in (("full-group", self.full_group), ("read-group", self.read_group)):
            try:
                grp.getgrnam(group)
            except KeyError:
                log.warn("--{option} {group}: no such group on this system, so no user gets its role",
                         option=option, group=group)

    def start(self) -> None:
        self.pool.start()

    def reload(self) -> None:
        """SIGHUP: cached HTTP Basic logins are checked with PAM again (and the user's groups read again)."""
        self.changed += 1

    def stop(self) -> None:
        self.pool.stop()

    def _check(self, username: str, password: bytes) -> tuple[str | None, str]:
        """In a pool thread: ``(role, why)``; role is None when the login is refused."""
        if not valid_name(username):
            return None, "not a valid user name"
        authenticator = self._pam.PamAuthenticator()
        try:
            ok = authenticator.authenticate(username, password, service=self.service, resetcreds=False)
        except ValueError:  # a NUL byte in the password
            return None, "PAM refused the password"
        if not ok:
            return None, f"PAM: {authenticator.reason}"
        role = role_from_groups(groups_of(username), self.full_group, self.read_group)
        if role is None:
            return None, f"in neither group {self.full_group!r} nor {self.read_group!r}"
        return role, ""

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:  # type: ignore[override]  # never ANONYMOUS
        try:
            username = credentials.username.decode("utf-8")
        except UnicodeDecodeError:
            username = ""
        d = deferToThreadPool(self.reactor, self.pool, self._check, username, credentials.password)

        def checked(result: tuple[str | None, str]) -> bytes:
            role, why = result
            if role is None:
                log.info("system login refused for {username!r}: {why}", username=username[:64], why=why)
                if why.startswith("in neither"):
                    self._set_role(username, None)
                raise UnauthorizedLogin()
            self._set_role(username, role)
            return username.encode()

        return d.addCallback(checked)

    def _set_role(self, username: str, role: str | None) -> None:
        old = self.roles.get(username)
        if old == role:
            return
        if role is None:
            del self.roles[username]
        else:
            self.roles[username] = role
        if old is not None:
            self.changed += 1
            if self.on_users_changed is not None:
                self.on_users_changed({username})

    def refresh(self, username: str) -> None:
        """Read ``username``'s groups again, in the pool, unless that was done lately."""
        now = self.reactor.seconds()
        if now - self._refreshed.get(username, -self.refresh_seconds) < self.refresh_seconds:
            return
        if len(self._refreshed) > 10000:
            self._refreshed.clear()  # a bound; forgetting only allows an early re-read
        self._refreshed[username] = now
        d = deferToThreadPool(self.reactor, self.pool, groups_of, username)

        def read(groups: set[str]) -> None:
            self._set_role(username, role_from_groups(groups, self.full_group, self.read_group))

        d.addCallbacks(read, lambda f: log.failure("reading the groups of {username!r} failed", f,
                                                    username=username))

    def role_of(self, name: str) -> str | None:
        return self.roles.get(name)
