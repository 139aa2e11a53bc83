"""
The users file as a ``twisted.cred`` checker, and the timer service that
reads the file again when it changes (docs/security.rst: a changed or
removed user's tokens and sessions end).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.cred import credentials as cred_credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..reactors import IThreadedClock
from .users import READ, UserEntry, UsersFileError, read_private_users, read_users, verify_password

log = Logger()


@implementer(ICredentialsChecker)
class UsersFileChecker:
    """
    Checks usernames and passwords against the users file.  The file is
    read off the reactor thread, and read again when it changes, so users
    added with ``sysadm-dispatch user add`` can log in without a restart.
    """

    credentialInterfaces = (cred_credentials.IUsernamePassword,)

    def __init__(self, reactor: IThreadedClock, path: str, poll_seconds: float = 2.0) -> None:
        self.reactor = reactor
        self.path = path
        #: Where passwords are checked: a small pool of the server's own
        #: (set by the server), else the reactor's.
        self.pool: ThreadPool | None = None
        self.users: dict[str, UserEntry] = {}
        self._stamp: tuple[int, ...] | None = None
        #: The timer service that looks at the file every ``poll_seconds``
        #: (``start``/``stop``, or a child of the server's service).
        self.watch = UsersFileWatch(self, reactor, poll_seconds)
        self.changed = 0
        #: Called with the names of users whose password or role changed, or
        #: who are gone, each time the file is read again.
        self.on_users_changed: Callable[[set[str]], None] | None = None

    def load(self) -> None:
        """Read the users file now (at startup, before the reactor runs)."""
        self._stamp = self._file_stamp()
        self.users = read_users(self.path)

    def start(self) -> None:
        """Look at the file every ``poll_seconds`` from now on."""
        if not self.watch.running:
            self.watch.startService()

    def reload(self) -> Deferred[None]:
        """Read the users file again now, changed or not (SIGHUP)."""
        self._stamp = None
        return self.check_changed()

    def stop(self) -> Deferred[None] | None:
        """Stop looking at the file; fires once a look under way is done."""
        if self.watch.running:
            d: Deferred[None] = self.watch.stopService()
            return d
        return None

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
    def check_changed(self) -> Any:
        """Read the users file again if it changed since it was last read."""
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
        d = deferToThreadPool(self.reactor, pool, verify_password, password, entry.password_hash)
        return d.addCallback(checked)

    def role_of(self, name: str) -> str | None:
        entry = self.users.get(name)
        return entry.role if entry else None


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


class UsersFileWatch(TimerService):
    """
    Looks at the users file every ``poll_seconds`` of ``clock`` and has
    the checker read it again when it changed; stopping waits for a look
    under way.  The first look is one interval after the start: the file
    was just read (``UsersFileChecker.load``).
    """

    def __init__(self, checker: UsersFileChecker, clock: IThreadedClock, poll_seconds: float) -> None:
        super().__init__(poll_seconds, self._look)
        self.clock = clock
        self.checker = checker
        self._started_now = False

    def startService(self) -> None:
        self._started_now = True
        super().startService()

    def _look(self) -> Deferred[None] | None:
        if self._started_now:
            # (TimerService calls at once when it starts.)
            self._started_now = False
            return None
        d: Deferred[None] = self.checker.check_changed()
        return d
