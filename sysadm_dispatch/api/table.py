"""
The handler table: what a client may call, who may call it, and the one
place where that is checked.

Each area of the protocol (the modules of ``api/handlers``) registers its
handlers once, keyed as the protocol keys requests: ``(namespace, name)``,
and for the names that take an ``args.action`` (``rpc/dispatcher``,
``rpc/logs``) ``(namespace, name, action)``, each with the role it needs:

- ``Role.PUBLIC``: anyone, logged in or not (``rpc/auth``, ``rpc/identify``);
- ``Role.READ``: any logged-in user;
- ``Role.FULL``: a user with full access (``run``, ``kill``).

What ``rpc/query`` answers and which requests need no login are read from
the table, so adding an action touches only the module of its area.

The one return rule: a handler returns a ``Deferred`` that fires with the
reply's ``args`` (``succeed(value)`` when the answer is known at once) or
fails with ``RPCError(code, detail)``; it may also raise ``RPCError`` before
it returns.  Anything else raised, failed, or returned is a bug: logged
with its traceback by the router and answered 500 without it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from .access import check_address, require_full, require_user
from .envelope import RPCError
from .session import Session

if TYPE_CHECKING:
    from ..auth.login import Authenticator
    from ..auth.users import User
    from ..core.dispatcher import Dispatcher


class Role(enum.Enum):
    PUBLIC = "public"
    READ = "read"
    FULL = "full"


class Services(Protocol):
    """What handlers reach through a ``Call``: the domain and the authenticator."""

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def auth(self) -> Authenticator: ...

    @property
    def hostname(self) -> str: ...

    @property
    def table(self) -> HandlerTable: ...


class Call:
    """One request, as a handler receives it."""

    __slots__ = ("args", "services", "session")

    def __init__(self, services: Services, session: Session, args: Any) -> None:
        self.services = services
        self.session = session
        self.args = args


Handler = Callable[[Call], "Deferred[Any]"]


@dataclass(frozen=True)
class Entry:
    namespace: str
    name: str
    action: str | None
    role: Role
    handler: Handler
    #: With ``Role.FULL``: what a read-only user is told it may not do ("run jobs").
    what: str = ""


@dataclass
class _Name:
    """The entries of one ``(namespace, name)`` and the rules shared by all of them."""

    entries: dict[str | None, Entry]
    #: The request gets no reply at all (``rpc/auth_clear``).
    silent: bool = False
    #: Answered even from a blocked address (``rpc/auth_clear``: it only forgets a token).
    unscreened: bool = False
    #: A login attempt: one from a blocked address is counted as a blocked login.
    login: bool = False

    #: Every entry is public (kept up to date by ``add``, as ``single``: they are asked on every request).
    public: bool = True
    #: The one entry of a name without actions.
    single: Entry | None = None

    def add(self, entry: Entry) -> None:
        self.entries[entry.action] = entry
        self.public = self.public and entry.role is Role.PUBLIC
        if entry.action is None:
            self.single = entry

    @property
    def actions(self) -> list[str]:
        return [action for action in self.entries if action is not None]


class HandlerTable:
    """``(namespace, name[, action])`` to handler and role; see the module's docstring."""

    def __init__(self) -> None:
        self._names: dict[tuple[str, str], _Name] = {}

    def register(
        self,
        namespace: str,
        name: str,
        handler: Handler,
        *,
        role: Role,
        action: str | None = None,
        what: str = "",
        silent: bool = False,
        unscreened: bool = False,
        login: bool = False,
    ) -> None:
        """Add one handler; ``ValueError`` if its key is taken or mixes names with and without actions."""
        if role is Role.FULL and not what:
            raise ValueError(f"{namespace}/{name}: a handler for full access says what it does (what=...)")
        known = self._names.get((namespace, name))
        if known is None:
            known = self._names[(namespace, name)] = _Name({}, silent, unscreened, login)
        elif action in known.entries or (action is None) != (None in known.entries):
            raise ValueError(f"{namespace}/{name}: {action or 'a handler'} is registered already")
        known.add(Entry(namespace, name, action, role, handler, what))

    def names(self) -> list[tuple[str, str]]:
        """Every ``(namespace, name)`` a client may send, in the order registered."""
        return list(self._names)

    def actions(self, namespace: str, name: str) -> list[str]:
        """The actions of a name that takes one, in the order registered (empty for the others)."""
        known = self._names.get((namespace, name))
        return known.actions if known is not None else []

    def is_public(self, namespace: str, name: str) -> bool:
        """Whether ``namespace/name`` needs no logged-in user (false for names not in the table)."""
        known = self._names.get((namespace, name))
        return known is not None and known.public

    def is_silent(self, namespace: str, name: str) -> bool:
        known = self._names.get((namespace, name))
        return known is not None and known.silent

    def public_names(self) -> set[tuple[str, str]]:
        return {key for key, known in self._names.items() if known.public}

    def listing(self, user: User) -> dict[str, str]:
        """
        What ``rpc/query`` answers ``user``: each ``rpc`` name that needs a
        login (but ``query`` itself), ``read/write`` where it has an action
        for full access that the user may use, else ``read``.
        """
        listed = {}
        for (namespace, name), known in self._names.items():
            if namespace != "rpc" or name == "query" or known.public:
                continue
            writes = any(entry.role is Role.FULL for entry in known.entries.values())
            listed[f"{namespace}/{name}"] = "read/write" if writes and user.may_write else "read"
        return listed

    # Serving a request.

    def call(self, services: Services, session: Session, namespace: str, name: str, args: Any) -> Deferred[Any]:
        """
        The handler's Deferred reply args, after the checks its role asks
        for; fails with ``RPCError`` for a refusal, anything else for a bug.
        """
        known = self._names.get((namespace, name))
        auth = services.auth
        try:
            # Before anything else, and so before any password or token is looked at.
            if known is None or not known.unscreened:
                try:
                    check_address(auth, session)
                except RPCError:
                    if known is not None and known.login:
                        auth.count_login(session.transport, "blocked")
                    raise
            if known is None or not known.public:
                require_user(auth, session)
            if known is None:
                raise RPCError(404, f"unknown request {namespace}/{name}")
            entry = known.single or self._entry(known, name, args)
            if entry.role is Role.FULL:
                require_full(auth, session, entry.what, args)
            d = entry.handler(Call(services, session, args))
        except Exception:
            return fail(Failure())
        if not isinstance(d, Deferred):
            bug = TypeError(f"the handler of {namespace}/{name} returned {type(d).__name__}, not a Deferred")
            return fail(bug)
        return d

    def _entry(self, known: _Name, name: str, args: Any) -> Entry:
        action = args.get("action") if isinstance(args, dict) else None
        entry = known.entries.get(action) if isinstance(action, str) else None
        if entry is not None:
            return entry
        actions = known.actions
        choices = actions[0] if len(actions) == 1 else f"{', '.join(actions[:-1])} or {actions[-1]}"
        if not isinstance(args, dict):
            raise RPCError(400, f"{name}: args must be an object with an action")
        if action is None:
            raise RPCError(400, f"{name}: action is missing ({choices})")
        raise RPCError(400, f"{name}: unknown action {str(action)[:64]!r} ({choices})")
