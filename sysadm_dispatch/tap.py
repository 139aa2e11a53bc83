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
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.threadpool import ThreadPool

from .api.router import Router
from .auth.blocking import LoginGuard
from .auth.login import (
    Authenticator,
    UsersFileChecker,
    UsersFileError,
    check_private,
    default_state_dir,
    ensure_users_file,
    map_big_blocks,
)
from .auth.pam import SystemAuthError, SystemChecker
from .core.dispatcher import Dispatcher
from .core.job import DEFAULT_QUEUES, Limits
from .ops.metrics import DispatchMetrics
from .ops.sdnotify import NotifyService, ReloadService, take_notify_socket
from .ops.serverlog import FORMATS, ServerLog
from .process.backends import DEFAULT_SPAWNER, SPAWNERS
from .process.procs import ProcessTracker
from .process.subreaper import SubreaperService
from .store.database import HistoryPruner, Store, StoreError
from .transports.dashboard import DashboardRoot
from .transports.limits import calm_accept
from .transports.rest import RestAPI
from .transports.websocket import make_websocket_factory

log = Logger()

DEFAULT_WS = "tcp:12150:interface=127.0.0.1"
DEFAULT_REST = "tcp:12151:interface=127.0.0.1"
#: The job store (queued jobs and history), in the state directory.
STORE_FILE = "dispatch.sqlite3"


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


def _choice(option: str, choices: tuple[str, ...]) -> Any:
    def coerce(value: str) -> str:
        if value not in choices:
            raise ValueError(f"--{option} {value!r}: choose one of {', '.join(choices)}")
        return value

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def tls_endpoint(spec: str, cert: str, key: str) -> str:
    """A ``tcp:`` endpoint string made into the ``ssl:`` one with the same port and options."""
    if not spec.startswith("tcp:"):
        return spec
    return f"ssl:{spec[4:]}:privateKey={quoteStringArgument(key)}:certKey={quoteStringArgument(cert)}"


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
        ["auth", None, "users", "Who may log in: users (the users file) or system (PAM, roles from groups).",
         _choice("auth", ("users", "system"))],
        ["full-group", None, "wheel", "With --auth system: members of this group may run and kill."],
        ["read-group", None, "operator", "With --auth system: members of this group may look."],
        ["pam-service", None, "login", "With --auth system: the PAM service that checks passwords."],
        ["tls-cert", None, None, "TLS certificate (PEM): every tcp: endpoint becomes ssl: with it."],
        ["tls-key", None, None, "Private key (PEM) for --tls-cert [default: the --tls-cert file]."],
        ["max-failed-logins", None, 5, "Failed logins from one address that block it.",
         _number("max-failed-logins", int, 1, 1_000_000)],
        ["failed-login-window", None, 600.0, "Seconds over which failed logins are counted.",
         _number("failed-login-window", float, 1, 30 * 86400)],
        ["max-login-checks", None, 64, "Logins checked or waiting at once; more are refused (503) at once "
         "(0: no limit).", _number("max-login-checks", int, 0, 1_000_000)],
        ["block-seconds", None, 3600.0, "Seconds a blocked address stays blocked.",
         _number("block-seconds", float, 1, 365 * 86400)],
        ["idle-timeout", None, 1800.0, "Seconds without a message before a connection is closed (0: never).",
         _number("idle-timeout", float, 0, 30 * 86400)],
        ["auth-timeout", None, 30.0, "Seconds a WebSocket may stay unauthenticated (0: no limit).",
         _number("auth-timeout", float, 0, 86400)],
        ["max-pending", None, 10000, "Pending jobs the server holds in all; more answers 503.",
         _number("max-pending", int, 1, 100_000_000)],
        ["max-jobs-per-run", None, 1000, "Jobs in one run request.",
         _number("max-jobs-per-run", int, 1, 1_000_000)],
        ["max-chain", None, 256, "Commands in one job's chain.", _number("max-chain", int, 1, 1_000_000)],
        ["max-connections-per-address", None, 2000, "WebSocket connections from one client address (0: no limit).",
         _number("max-connections-per-address", int, 0, 100_000_000)],
        ["max-rest-connections-per-address", None, 256, "REST connections from one client address (0: no limit; "
         "not applied with --trust-proxy).", _number("max-rest-connections-per-address", int, 0, 100_000_000)],
        ["max-rest-connections", None, 4096, "REST connections in all (0: no limit).",
         _number("max-rest-connections", int, 0, 100_000_000)],
        ["request-timeout", None, 30.0, "Seconds a REST connection may take to send a complete request (0: no limit).",
         _number("request-timeout", float, 0, 86400)],
        ["max-json-depth", None, 32, "Nesting depth of a request's JSON.", _number("max-json-depth", int, 8, 512)],
        ["max-string-chars", None, 65536, "Length of any one string in a request.",
         _number("max-string-chars", int, 64, 1 << 30)],
        ["kill-grace", None, 5.0, "Seconds between SIGTERM and SIGKILL when a job is killed.",
         _number("kill-grace", float, 0, 3600)],
        ["spawner", None, DEFAULT_SPAWNER, "How commands are started: fast (posix_spawn and pidfds, Linux) or twisted "
         "(reactor.spawnProcess, each command in a session of its own); see docs/processes.rst.",
         _choice("spawner", tuple(SPAWNERS))],
        ["job-timeout", None, 0.0, "Seconds a job without a timeout of its own may run (0: no limit).",
         _number("job-timeout", float, 0, 10 * 365 * 86400)],
        ["token-ttl", None, 900.0, "Seconds a token stays valid without use.",
         _number("token-ttl", float, 1, 30 * 86400)],
        ["max-message-bytes", None, 1 << 20, "Largest request accepted, in bytes.",
         _number("max-message-bytes", int, 256, 1 << 30)],
        ["max-unauthenticated-bytes", None, 64 << 10, "Largest WebSocket message before login, or REST body "
         "without valid credentials, in bytes.",
         _number("max-unauthenticated-bytes", int, 256, 1 << 30)],
        ["log-cap-bytes", None, 1 << 20, "Output kept per command, in bytes.",
         _number("log-cap-bytes", int, 64, 1 << 30)],
        ["history-days", None, 30, "Finished jobs are kept in the history for this many days.",
         _number("history-days", int, 1, 36500)],
        ["history-max-jobs", None, 100000, "At most this many finished jobs are kept in the history (the oldest "
         "go first).", _number("history-max-jobs", int, 1, 1 << 40)],
        ["update-interval", None, 1.0, "At most one running-job output event per job per this many seconds.",
         _number("update-interval", float, 0.01, 3600)],
        ["event-backlog-bytes", None, 4 << 20, "Bytes that may wait for a slow WebSocket client before it is "
         "disconnected.", _number("event-backlog-bytes", int, 65536, 1 << 30)],
        ["event-backlog-seconds", None, 5.0, "Seconds the bytes waiting for a WebSocket client may stay above "
         "--event-backlog-bytes before it is disconnected.", _number("event-backlog-seconds", float, 0.1, 3600)],
        ["metrics", None, None, "Prometheus metrics endpoint, e.g. tcp:9150:interface=127.0.0.1 (no login: bind it "
         "where only the monitoring reaches it) [default: off]."],
        ["log-format", None, "text", "Log as text or json (one JSON object a line, with each event's fields).",
         _choice("log-format", FORMATS)],
        ["wamp", None, None, "Join this WAMP router (ws:// or wss://) as one host of a fleet (docs/fleet.rst) "
         "[default: off]."],
        ["wamp-realm", None, "sysadm", "With --wamp: the realm to join."],
        ["wamp-host", None, None, "With --wamp: this host's name in the fleet (letters, digits, - and _), its "
         "authid and part of its URIs [default: the machine's host name]."],
        ["wamp-ticket-file", None, None, "With --wamp: log in to the router with the ticket on this file's first "
         "line."],
        ["wamp-cra-secret-file", None, None, "With --wamp: log in to the router by WAMP-CRA with the secret on this "
         "file's first line."],
        ["wamp-full-role", None, "operator", "With --wamp: callers with this WAMP role may run and kill."],
        ["wamp-read-role", None, "viewer", "With --wamp: callers with this WAMP role may look."],
    ]

    optFlags = [
        ["trust-proxy", None, "Take the client's address from X-Forwarded-For (only behind a proxy you run)."],
        ["access-log", None, "Log a line for every REST request."],
        ["no-dashboard", None, "Serve neither the web dashboard (GET /) nor WebSocket at /ws on the REST listener."],
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
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        if self["tls-cert"]:
            key = self["tls-key"] or self["tls-cert"]
            for name in ("ws", "rest"):
                self[name] = tls_endpoint(self[name], os.path.abspath(self["tls-cert"]), os.path.abspath(key))
        if self["spawner"] not in SPAWNERS:
            raise usage.UsageError(f"--spawner must be one of {', '.join(SPAWNERS)}")
        check_wamp_options(self)


def check_wamp_options(options: Options) -> None:
    """The ``--wamp*`` options, checked together; ``UsageError`` saying what is wrong."""
    if not options["wamp"]:
        given = [name for name in ("wamp-host", "wamp-ticket-file", "wamp-cra-secret-file") if options[name]]
        if given:
            raise usage.UsageError(f"--{given[0]} needs --wamp")
        return
    from .transports.wamp import check_host, check_realm, check_router_url, default_host

    try:
        check_router_url(options["wamp"])
        check_realm(options["wamp-realm"])
        host = options["wamp-host"]
        options["wamp-host"] = check_host(default_host() if host is None else host)
        for name in ("wamp-full-role", "wamp-read-role"):
            check_realm(options[name])
    except ValueError as e:
        raise usage.UsageError(f"--wamp: {e}") from None
    if options["wamp-full-role"] == options["wamp-read-role"]:
        raise usage.UsageError("--wamp-full-role and --wamp-read-role must differ")
    secrets = [name for name in ("wamp-ticket-file", "wamp-cra-secret-file") if options[name]]
    if len(secrets) != 1:
        raise usage.UsageError("--wamp needs one of --wamp-ticket-file or --wamp-cra-secret-file (the router "
                               "admits no anonymous host)")


def wamp_host(options: Options, router: Router, reactor: Any) -> Service:
    """The fleet membership ``--wamp`` asks for (a ``WampHost``), its secret read (and mode-checked) now."""
    from .transports.wamp import WampHost, read_secret

    ticket_file, cra_file = options["wamp-ticket-file"], options["wamp-cra-secret-file"]
    try:
        secret = read_secret(ticket_file or cra_file)
    except (OSError, UsersFileError) as e:
        raise SystemExit(f"sysadm-dispatch: cannot use the WAMP secret file: {e}") from None
    return WampHost(router, options["wamp"], realm=options["wamp-realm"], host=options["wamp-host"],
                    ticket=secret if ticket_file else None, cra_secret=secret if cra_file else None,
                    full_role=options["wamp-full-role"], read_role=options["wamp-read-role"], reactor=reactor)


def _endpoint(reactor: Any, option: str, spec: str, tls_option: bool = False) -> Any:
    try:
        return serverFromString(reactor, spec)
    except ImportError as e:
        # TLS is a normal dependency; a broken install still gets its fix named.
        which = "--tls-cert" if tls_option else f"--{option} {spec!r}"
        raise SystemExit(f"sysadm-dispatch: {which} needs the {e.name or 'missing'} module ({e}): "
                         "install it with pip install 'twisted[tls]' in the server's environment") from None
    except Exception as e:  # any reason (an unreadable TLS key, say) is reported in one line
        raise SystemExit(f"sysadm-dispatch: --{option} {spec!r}: {e or type(e).__name__}") from None


class ServerService(MultiService):
    """
    The whole server.  Under ``twistd`` it brings its own log observer,
    given to the application as twistd expects (see ``serverlog``).
    """

    log_observer: Any = None

    def setServiceParent(self, parent: Any) -> Any:
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)


def _server_log(options: Options) -> ServerLog | None:
    """The log of a server run by ``twistd`` (None otherwise, or when twistd is told to log elsewhere)."""
    twistd = getattr(options, "parent", None)
    if twistd is None or twistd.get("logger") or twistd.get("syslog"):
        return None
    try:
        return ServerLog(options["log-format"], twistd.get("logfile") or "", bool(twistd.get("nodaemon")))
    except OSError as e:
        raise SystemExit(f"sysadm-dispatch: cannot open the log file: {e}") from None


class _GuardService(Service):
    """Cancels the login guard's release timers at shutdown."""

    def __init__(self, guard: LoginGuard) -> None:
        self.guard = guard

    def stopService(self) -> Any:
        self.guard.stop()
        return super().stopService()


#: Threads that check passwords (scrypt, about 16 MiB and 65 ms each): few, so
#: that logins cannot take every core and leave few allocator arenas behind.
PASSWORD_THREADS = 2


class _UsersService(Service):
    def __init__(self, checker: UsersFileChecker | SystemChecker) -> None:
        self.checker = checker
        self.pool: ThreadPool | None = None
        if isinstance(checker, UsersFileChecker):
            map_big_blocks()
            self.pool = checker.pool = ThreadPool(minthreads=0, maxthreads=PASSWORD_THREADS,
                                                  name="sysadm-dispatch-passwords")

    def startService(self) -> None:
        super().startService()
        if self.pool is not None:
            self.pool.start()
        self.checker.start()

    def stopService(self) -> None:
        self.checker.stop()
        if self.pool is not None:
            self.pool.stop()
        return super().stopService()


class ListenerService(StreamServerEndpointService):
    """A listener whose bound port can be asked for (useful with port 0)."""

    def __init__(self, name: str, endpoint: Any, factory: Any, spec: str = "", clock: Any = None) -> None:
        super().__init__(endpoint, factory)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.setName(name)
        self.spec = spec
        self._listening: list[Deferred[Any]] = []
        self.port: Any = None

    def privilegedStartService(self) -> None:
        # A listener that cannot bind stops the server at start, in one line:
        # a server listening on nothing would look up to a service manager.
        self._raiseSynchronously = True
        try:
            super().privilegedStartService()
        except Exception as e:
            reason = getattr(e, "socketError", None) or e
            where = f"--{self.name} {self.spec!r}" if self.spec else f"the {self.name} listener"
            raise SystemExit(f"sysadm-dispatch: {where}: cannot listen: {reason}") from None
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: Any) -> Any:
        self.port = port
        calm_accept(port, self.clock)
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
    if options["auth"] != "users":
        return
    users = options["users"]
    created = ensure_users_file(users, os.path.join(state_dir, "admin-password"))
    if created:
        log.warn("created users file {users} with user 'admin'; its password is in {path}", users=users, path=created)
    check_private(users)


def open_store(options: Options, reactor: Any) -> Store:
    """
    The job store in the state directory, opened and checked now, before
    the reactor runs: a corrupt or unreadable file is moved aside (loudly)
    and a fresh one started; a store that cannot be had stops the server.
    """
    store = Store(os.path.join(options["state-dir"], STORE_FILE), reactor)
    try:
        moved = store.prepare()
    except StoreError as e:
        raise SystemExit(f"sysadm-dispatch: cannot use the job store: {e}") from None
    if moved:
        log.critical("THE JOB STORE {path} WAS CORRUPT OR UNREADABLE: moved it to {moved} and started an empty "
                     "one; the jobs queued and the history in it are not used", path=store.path, moved=moved)
    return store


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    checker: UsersFileChecker | SystemChecker
    try:
        prepare_state(options)
        if options["auth"] == "system":
            checker = SystemChecker(reactor, service=options["pam-service"], full_group=options["full-group"],
                                    read_group=options["read-group"])
        else:
            checker = UsersFileChecker(reactor, options["users"])
        checker.load()
    except (OSError, UsersFileError, SystemAuthError) as e:
        # Reported like a bad option: one line, no traceback.
        raise SystemExit(f"sysadm-dispatch: cannot prepare the state directory or users file: {e}") from None
    endpoints = {name: _endpoint(reactor, name, options[name], bool(options["tls-cert"]))
                 for name in ("ws", "rest", "metrics") if options[name]}
    store = open_store(options, reactor)
    # Before the dispatcher copies the environment for its jobs.
    notify_socket = take_notify_socket()

    top = ServerService()
    server_log = _server_log(options)
    if server_log is not None:
        top.log_observer = server_log.observer()
    processes = ProcessTracker(reactor, spawner=options["spawner"])
    dispatcher = Dispatcher(
        reactor,
        queues=options["queues"],
        kill_grace=options["kill-grace"],
        job_timeout=options["job-timeout"],
        log_cap_bytes=options["log-cap-bytes"],
        limits=Limits(max_jobs_per_run=options["max-jobs-per-run"], max_commands=options["max-chain"]),
        max_pending=options["max-pending"],
        update_interval=options["update-interval"],
        store=store,
        processes=processes,
    )
    # Stopped last (services stop in reverse order): listeners close first,
    # then running jobs are killed.
    dispatcher.setServiceParent(top)
    # Orphaned job processes are re-parented to the server, found and reaped.
    SubreaperService(processes).setServiceParent(top)
    _UsersService(checker).setServiceParent(top)
    # Stopped before the dispatcher closes the store.
    HistoryPruner(store, reactor, days=options["history-days"], max_jobs=options["history-max-jobs"]
                  ).setServiceParent(top)
    guard = LoginGuard(reactor, max_failures=options["max-failed-logins"], window=options["failed-login-window"],
                       block_seconds=options["block-seconds"])
    _GuardService(guard).setServiceParent(top)
    auth = Authenticator(reactor, checker, token_ttl=options["token-ttl"], guard=guard,
                         max_login_checks=options["max-login-checks"])
    router = Router(dispatcher, auth, max_message_bytes=options["max-message-bytes"],
                    max_depth=options["max-json-depth"], max_string_chars=options["max-string-chars"])

    ws = make_websocket_factory(router, max_backlog_bytes=options["event-backlog-bytes"],
                                backlog_grace=options["event-backlog-seconds"])
    ws.guard_connections(idle_timeout=options["idle-timeout"], auth_timeout=options["auth-timeout"],
                         max_connections_per_address=options["max-connections-per-address"],
                         trust_proxy=options["trust-proxy"],
                         max_unauthenticated_bytes=options["max-unauthenticated-bytes"])
    ListenerService("ws", endpoints["ws"], ws, options["ws"], reactor).setServiceParent(top)
    rest = RestAPI(router, trust_proxy=options["trust-proxy"],
                   max_unauthenticated_bytes=options["max-unauthenticated-bytes"]).site(
        timeout=options["idle-timeout"] or None, access_log=bool(options["access-log"]),
        max_connections_per_address=options["max-rest-connections-per-address"],
        max_connections=options["max-rest-connections"], request_timeout=options["request-timeout"],
    )
    if not options["no-dashboard"]:
        # The page, its assets and /ws beside the API (docs/dashboard.rst).
        rest.resource = DashboardRoot(rest.resource, ws)
    ListenerService("rest", endpoints["rest"], rest, options["rest"], reactor).setServiceParent(top)
    if "metrics" in endpoints:
        metrics = DispatchMetrics(dispatcher, auth=auth, websocket=ws, store=store)
        ListenerService("metrics", endpoints["metrics"], metrics.site(), options["metrics"], reactor
                        ).setServiceParent(top)
    if server_log is not None:
        rotate = server_log.logfile.rotate if server_log.logfile is not None else None
        ReloadService(reactor, checker.reload, server_log.reopen, rotate).setServiceParent(top)
    if options["wamp"]:
        top.wamp = wamp_host(options, router, reactor)  # type: ignore[attr-defined]
        top.wamp.setServiceParent(top)  # type: ignore[attr-defined]
    if notify_socket is not None:
        listeners = [service for service in top if isinstance(service, ListenerService)]
        NotifyService(notify_socket, lambda: [*(listener.when_listening() for listener in listeners),
                                              dispatcher.when_recovered()]).setServiceParent(top)
    top.dispatcher = dispatcher  # type: ignore[attr-defined]
    top.router = router  # type: ignore[attr-defined]
    return top
