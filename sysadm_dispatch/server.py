"""
The composition root: ``make_server`` builds the whole server, every room
wired once, as one ``MultiService``, for ``twistd sysadm-dispatch``
(``tap.py``) and for programs that embed it alike.  The rooms and the
direction of their imports: docs/architecture.rst.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from .api.router import Router
from .auth.blocking import LoginGuard
from .auth.checker import UsersFileChecker
from .auth.login import Authenticator
from .auth.pam import SystemAuthError, SystemChecker
from .auth.users import UsersFileError, check_private, ensure_users_file, map_big_blocks
from .config import ServerConfig
from .core.dispatcher import Dispatcher
from .core.spec import Limits
from .listeners import ListenerService, endpoint, tls_endpoint
from .ops.metrics import DispatchMetrics
from .ops.sdnotify import NotifyService, ReloadService, take_notify_socket
from .process.procs import ProcessTracker
from .process.subreaper import SubreaperService
from .reactors import IServerReactor
from .store.database import Store
from .store.records import StoreError
from .store.retention import HistoryPruner
from .transports.dashboard import DashboardRoot
from .transports.rest import RestAPI
from .transports.websocket import DispatchServerFactory, make_websocket_factory

log = Logger()

#: The job store (queued jobs and history), in the state directory.
STORE_FILE = "dispatch.sqlite3"
#: Threads that check passwords (scrypt, about 16 MiB and 65 ms each): few, so
#: that logins cannot take every core and leave few allocator arenas behind.
PASSWORD_THREADS = 2


class Server(MultiService):
    """
    The whole server: its dispatcher, request router and transports, and the
    services that run them.  Starting it starts everything; stopping it
    closes the listeners first, then kills running jobs, then closes the
    store.  Under ``twistd`` it brings its own log observer, given to the
    application as twistd expects (see ``ops/serverlog.py``).
    """

    def __init__(self, dispatcher: Dispatcher, router: Router, websocket: DispatchServerFactory, rest: Site, *,
                 metrics: DispatchMetrics | None = None, wamp: Service | None = None,
                 log_observer: ILogObserver | None = None) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.router = router
        self.auth: Authenticator = router.auth
        self.store: Store | None = dispatcher.store
        #: The WebSocket factory (on ``ws``, and at ``/ws`` of ``rest`` with the dashboard).
        self.websocket = websocket
        #: The REST site (with the dashboard unless it is off).
        self.rest = rest
        self.metrics = metrics
        #: The fleet membership (``--wamp``), or None.
        self.wamp = wamp
        self.log_observer = log_observer

    def listener(self, name: str) -> ListenerService:
        """The listener ``ws``, ``rest`` or ``metrics`` (``KeyError`` when it is off)."""
        service = self.getServiceNamed(name)
        assert isinstance(service, ListenerService)
        return service

    def setServiceParent(self, parent: Any) -> Any:
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)


def make_server(reactor: IServerReactor, config: ServerConfig | None = None, **settings: Any) -> Server:
    """
    The whole server, not started, from ``config`` and/or the ``ServerConfig``
    fields given as keywords (``make_server(reactor, state_dir=...,
    queues={"backup_queue": 1}, rest="tcp:8080", ws=None)``).  The state
    directory is made and, on first run, the users file with an ``admin``
    (its password in ``<state_dir>/admin-password``); the store is opened
    now.  What cannot be had stops the program in one line (``SystemExit``).
    """
    config = replace(config, **settings) if config is not None else ServerConfig(**settings)
    if config.tls_cert:
        cert = os.path.abspath(config.tls_cert)
        key = os.path.abspath(config.tls_key or config.tls_cert)
        config = replace(config, ws=config.ws and tls_endpoint(config.ws, cert, key),
                         rest=config.rest and tls_endpoint(config.rest, cert, key))
    checker = password_checker(reactor, config)
    endpoints = {name: endpoint(reactor, name, spec, bool(config.tls_cert))
                 for name, spec in (("ws", config.ws), ("rest", config.rest), ("metrics", config.metrics)) if spec}
    store = open_store(config.state_dir, reactor)
    # Before the dispatcher copies the environment for its jobs.
    notify_socket = take_notify_socket() if config.notify else None
    processes = ProcessTracker(reactor, spawner=config.spawner)
    dispatcher = Dispatcher(
        reactor,
        processes=processes,
        queues=config.queues,
        kill_grace=config.kill_grace,
        job_timeout=config.job_timeout,
        log_cap_bytes=config.log_cap_bytes,
        limits=Limits(max_jobs_per_run=config.max_jobs_per_run, max_commands=config.max_chain),
        max_pending=config.max_pending,
        update_interval=config.update_interval,
        store=store,
    )
    guard = login_guard(reactor, config)
    router = make_router(dispatcher, make_authenticator(reactor, checker, guard, config), config)
    ws = guarded_websocket_factory(router, config)
    rest = rest_site(router, ws, config)
    metrics = DispatchMetrics(dispatcher, auth=router.auth, websocket=ws, store=store) if config.metrics else None
    wamp = wamp_host(router, config, reactor) if config.wamp else None
    server_log = config.server_log
    server = Server(dispatcher, router, ws, rest, metrics=metrics, wamp=wamp,
                    log_observer=server_log.observer() if server_log is not None else None)

    # Services stop in the reverse order: the listeners close first, then
    # the dispatcher kills the running jobs and closes the store.
    dispatcher.setServiceParent(server)
    # Orphaned job processes are re-parented to the server, found and reaped.
    SubreaperService(processes).setServiceParent(server)
    PasswordCheckerService(checker).setServiceParent(server)
    # Stopped before the dispatcher closes the store.
    HistoryPruner(store, reactor, days=config.history_days, max_jobs=config.history_max_jobs
                  ).setServiceParent(server)
    LoginGuardService(guard).setServiceParent(server)
    sites: dict[str, Any] = {"ws": ws, "rest": rest, "metrics": metrics.site() if metrics is not None else None}
    listeners = [ListenerService(name, where, sites[name], getattr(config, name), reactor)
                 for name, where in endpoints.items()]
    for listener in listeners:
        listener.setServiceParent(server)
    if server_log is not None:
        rotate = server_log.logfile.rotate if server_log.logfile is not None else None
        ReloadService(reactor, checker.reload, server_log.reopen, rotate).setServiceParent(server)
    if wamp is not None:
        wamp.setServiceParent(server)
    if notify_socket is not None:
        NotifyService(notify_socket, lambda: [*(listener.when_listening() for listener in listeners),
                                              dispatcher.when_recovered()]).setServiceParent(server)
    return server


# The pieces, each built once here (embed.py builds its own from them).


def password_checker(reactor: IServerReactor, config: ServerConfig) -> UsersFileChecker | SystemChecker:
    """The state directory made ready and the password checker ``config.auth`` asks for, loaded."""
    try:
        prepare_state(config)
        checker: UsersFileChecker | SystemChecker
        if config.auth == "system":
            checker = SystemChecker(reactor, service=config.pam_service, full_group=config.full_group,
                                    read_group=config.read_group)
        else:
            checker = UsersFileChecker(reactor, config.users_file)
        checker.load()
    except (OSError, UsersFileError, SystemAuthError) as e:
        # Reported like a bad option: one line, no traceback.
        raise SystemExit(f"sysadm-dispatch: cannot prepare the state directory or users file: {e}") from None
    return checker


def prepare_state(config: ServerConfig) -> None:
    """Create the state directory and, on first run, the users file."""
    state_dir = config.state_dir
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    check_private(state_dir)
    if config.auth != "users":
        return
    users = config.users_file
    created = ensure_users_file(users, os.path.join(state_dir, "admin-password"))
    if created:
        log.warn("created users file {users} with user 'admin'; its password is in {path}", users=users, path=created)
    check_private(users)


def open_store(state_dir: str, reactor: IServerReactor) -> Store:
    """
    The job store in the state directory, opened and checked now, before
    the reactor runs: a corrupt or unreadable file is moved aside (loudly)
    and a fresh one started; a store that cannot be had stops the server.
    """
    store = Store(os.path.join(state_dir, STORE_FILE), reactor)
    try:
        moved = store.prepare()
    except StoreError as e:
        raise SystemExit(f"sysadm-dispatch: cannot use the job store: {e}") from None
    if moved:
        log.critical("THE JOB STORE {path} WAS CORRUPT OR UNREADABLE: moved it to {moved} and started an empty "
                     "one; the jobs queued and the history in it are not used", path=store.path, moved=moved)
    return store


def login_guard(clock: IReactorTime, config: ServerConfig) -> LoginGuard:
    return LoginGuard(clock, max_failures=config.max_failed_logins, window=config.failed_login_window,
                      block_seconds=config.block_seconds)


def make_authenticator(reactor: IReactorTime, checker: UsersFileChecker | SystemChecker, guard: LoginGuard,
                       config: ServerConfig) -> Authenticator:
    return Authenticator(reactor, checker, token_ttl=config.token_ttl, guard=guard,
                         max_login_checks=config.max_login_checks)


def make_router(dispatcher: Dispatcher, auth: Authenticator, config: ServerConfig) -> Router:
    return Router(dispatcher, auth, max_message_bytes=config.max_message_bytes, max_depth=config.max_json_depth,
                  max_string_chars=config.max_string_chars)


def websocket_factory(router: Router, config: ServerConfig) -> DispatchServerFactory:
    """The WebSocket factory, without the per-connection limits and timers."""
    return make_websocket_factory(router, max_backlog_bytes=config.event_backlog_bytes,
                                  backlog_grace=config.event_backlog_seconds)


def guarded_websocket_factory(router: Router, config: ServerConfig) -> DispatchServerFactory:
    """The WebSocket factory with the connection limits and timers of ``config`` (docs/security.rst)."""
    ws = websocket_factory(router, config)
    ws.guard_connections(idle_timeout=config.idle_timeout, auth_timeout=config.auth_timeout,
                         max_connections_per_address=config.max_connections_per_address,
                         trust_proxy=config.trust_proxy, max_unauthenticated_bytes=config.max_unauthenticated_bytes)
    return ws


def rest_api(router: Router, config: ServerConfig) -> RestAPI:
    return RestAPI(router, trust_proxy=config.trust_proxy, max_unauthenticated_bytes=config.max_unauthenticated_bytes)


def rest_site(router: Router, ws: DispatchServerFactory, config: ServerConfig) -> Site:
    """The REST listener's site, with its limits, and the dashboard and ``/ws`` unless it is off."""
    site = rest_api(router, config).site(
        timeout=config.idle_timeout or None, access_log=config.access_log,
        max_connections_per_address=config.max_rest_connections_per_address,
        max_connections=config.max_rest_connections, request_timeout=config.request_timeout,
    )
    if config.dashboard:
        # The page, its assets and /ws beside the API (docs/dashboard.rst).
        site.resource = DashboardRoot(site.resource, ws)
    return site


def wamp_host(router: Router, config: ServerConfig, reactor: IServerReactor) -> Service:
    """The fleet membership ``config.wamp`` asks for (a ``WampHost``), its secret read (and mode-checked) now."""
    from .transports.wamp import WampHost, default_host, read_secret

    ticket_file, cra_file = config.wamp_ticket_file, config.wamp_cra_secret_file
    secret_file = ticket_file or cra_file
    if secret_file is None:
        raise SystemExit("sysadm-dispatch: --wamp needs one of --wamp-ticket-file or --wamp-cra-secret-file")
    try:
        secret = read_secret(secret_file)
    except (OSError, UsersFileError) as e:
        raise SystemExit(f"sysadm-dispatch: cannot use the WAMP secret file: {e}") from None
    assert config.wamp is not None
    return WampHost(router, config.wamp, realm=config.wamp_realm, host=config.wamp_host or default_host(),
                    ticket=secret if ticket_file else None, cra_secret=secret if cra_file else None,
                    full_role=config.wamp_full_role, read_role=config.wamp_read_role, reactor=reactor)


class LoginGuardService(Service):
    """Cancels the login guard's release timers at shutdown."""

    def __init__(self, guard: LoginGuard) -> None:
        self.guard = guard

    def stopService(self) -> Any:
        self.guard.stop()
        return super().stopService()


class PasswordCheckerService(MultiService):
    """
    Runs the password checker and the threads that check passwords; the
    users file's watch (a ``TimerService``) is its child.
    """

    def __init__(self, checker: UsersFileChecker | SystemChecker) -> None:
        super().__init__()
        self.checker = checker
        self.pool: ThreadPool | None = None
        if isinstance(checker, UsersFileChecker):
            map_big_blocks()
            self.pool = checker.pool = ThreadPool(minthreads=0, maxthreads=PASSWORD_THREADS,
                                                  name="sysadm-dispatch-passwords")
            checker.watch.setServiceParent(self)

    def startService(self) -> None:
        if self.pool is not None:
            self.pool.start()
        if isinstance(self.checker, SystemChecker):
            self.checker.start()
        super().startService()

    def stopService(self) -> Any:
        d = super().stopService()
        if isinstance(self.checker, SystemChecker):
            self.checker.stop()
        if self.pool is not None:
            self.pool.stop()
        return d

