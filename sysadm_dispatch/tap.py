"""
The composition root: ``twistd sysadm-dispatch`` options, and the service
that holds the dispatcher and its two listeners.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from .auth import Authenticator, UsersFileChecker, UsersFileError, check_private, default_state_dir, ensure_users_file
from .dispatcher import Dispatcher
from .job import DEFAULT_QUEUES
from .rest import RestAPI
from .rpc import Router
from .websocket import make_websocket_factory

log = Logger()

DEFAULT_WS = "tcp:12150:interface=127.0.0.1"
DEFAULT_REST = "tcp:12151:interface=127.0.0.1"


def _number(option: str, kind: type, minimum: float, maximum: float | None = None) -> Any:
    """A coerce function for a numeric option, whose errors name the option."""

    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"--{option} {value!r} is not a {'whole ' if kind is int else ''}number") from None
        if number != number or number < minimum or (maximum is not None and number > maximum):
            bound = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ValueError(f"--{option} {value!r} is out of range: must be {bound}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def parse_queue(value: str) -> tuple[str, int]:
    """``NAME:N``: a queue and how many of its jobs may run at once (0: no limit)."""
    name, sep, limit = value.rpartition(":")
    if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise usage.UsageError(f"--queue {value!r}: expected NAME:N, e.g. backup_queue:2")
    try:
        n = int(limit)
    except ValueError:
        raise usage.UsageError(f"--queue {value!r}: N must be a whole number (0 means no limit)") from None
    if n < 0:
        raise usage.UsageError(f"--queue {value!r}: N must be 0 or more")
    return name, n


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the sysadm-dispatch server: the SysAdm dispatcher API over WebSocket and REST, "
        "sharing one dispatcher. Endpoints are Twisted endpoint strings (ssl: for TLS)."
    )

    optParameters = [
        ["ws", None, DEFAULT_WS, "WebSocket endpoint."],
        ["rest", None, DEFAULT_REST, "REST endpoint."],
        ["state-dir", None, None, "State directory [default: $XDG_STATE_HOME/sysadm-dispatch or "
                                  "~/.local/state/sysadm-dispatch]."],
        ["users", None, None, "Users file [default: <state-dir>/users]."],
        ["kill-grace", None, 5.0, "Seconds between SIGTERM and SIGKILL when a job is killed.",
         _number("kill-grace", float, 0, 3600)],
        ["token-ttl", None, 900.0, "Seconds a token stays valid without use.",
         _number("token-ttl", float, 1, 30 * 86400)],
        ["max-message-bytes", None, 1 << 20, "Largest request accepted, in bytes.",
         _number("max-message-bytes", int, 256, 1 << 30)],
        ["log-cap-bytes", None, 1 << 20, "Output kept per command, in bytes.",
         _number("log-cap-bytes", int, 64, 1 << 30)],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["queue"] = {}

    def opt_queue(self, value: str) -> None:
        """NAME:N adds a queue or sets how many of its jobs run at once (0: no limit); repeatable."""
        name, n = parse_queue(value)
        self["queue"][name] = n

    def postOptions(self) -> None:
        if self["state-dir"] is None:
            self["state-dir"] = default_state_dir()
        if self["users"] is None:
            self["users"] = os.path.join(self["state-dir"], "users")
        for key in ("ws", "rest"):
            if not self[key]:
                raise usage.UsageError(f"--{key} must be an endpoint string, e.g. {DEFAULT_WS}")
        self["queues"] = {**DEFAULT_QUEUES, **self["queue"]}


class _UsersService(Service):
    def __init__(self, checker: UsersFileChecker) -> None:
        self.checker = checker

    def startService(self) -> None:
        super().startService()
        self.checker.start()

    def stopService(self) -> None:
        self.checker.stop()
        return super().stopService()


class ListenerService(StreamServerEndpointService):
    """A listener whose bound port can be asked for (useful with port 0)."""

    def __init__(self, name: str, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self.setName(name)
        self._listening: list[Deferred[Any]] = []
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: Any) -> Any:
        self.port = port
        for d in self._listening:
            d.callback(port)
        self._listening.clear()
        return port

    def when_listening(self) -> Deferred[Any]:
        """Fires with the listening port once bound."""
        d: Deferred[Any] = Deferred()
        if self.port is not None:
            d.callback(self.port)
        else:
            self._listening.append(d)
        return d


def prepare_state(options: Options) -> None:
    """Create the state directory and, on first run, the users file."""
    state_dir = options["state-dir"]
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    check_private(state_dir)
    users = options["users"]
    created = ensure_users_file(users, os.path.join(state_dir, "admin-password"))
    if created:
        log.warn("created users file {users} with user 'admin'; its password is in {path}", users=users, path=created)
    check_private(users)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    try:
        prepare_state(options)
        checker = UsersFileChecker(reactor, options["users"])
        checker.load()
    except (OSError, UsersFileError) as e:
        # Reported like a bad option: one line, no traceback.
        raise SystemExit(f"sysadm-dispatch: cannot prepare the state directory or users file: {e}") from None

    top = MultiService()
    dispatcher = Dispatcher(
        reactor,
        queues=options["queues"],
        kill_grace=options["kill-grace"],
        log_cap_bytes=options["log-cap-bytes"],
    )
    # Stopped last (services stop in reverse order): listeners close first,
    # then running jobs are killed.
    dispatcher.setServiceParent(top)
    _UsersService(checker).setServiceParent(top)
    auth = Authenticator(reactor, checker, token_ttl=options["token-ttl"])
    router = Router(dispatcher, auth, max_message_bytes=options["max-message-bytes"])

    ws = make_websocket_factory(router)
    ListenerService("ws", serverFromString(reactor, options["ws"]), ws).setServiceParent(top)
    rest = Site(RestAPI(router).resource())
    rest.displayTracebacks = False
    ListenerService("rest", serverFromString(reactor, options["rest"]), rest).setServiceParent(top)
    top.dispatcher = dispatcher  # type: ignore[attr-defined]
    top.router = router  # type: ignore[attr-defined]
    return top
