"""
What a server is built from: one ``ServerConfig``, made by ``tap.py`` from
the ``twistd sysadm-dispatch`` options (each field is the option of the same
name, ``-`` for ``_``) or by a program that embeds the server.  Its defaults
are the options' defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .process.backends import DEFAULT_SPAWNER

if TYPE_CHECKING:
    from .ops.serverlog import ServerLog

DEFAULT_WS = "tcp:12150:interface=127.0.0.1"
DEFAULT_REST = "tcp:12151:interface=127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """
    Every setting of a server.  ``ws``, ``rest`` and ``metrics`` are Twisted
    endpoint strings; ``None`` leaves that listener out.  ``queues`` adds to
    (or sets the limits of) the default queues.
    """

    state_dir: str
    #: The users file [default: ``<state_dir>/users``].
    users: str | None = None
    queues: Mapping[str, int] = field(default_factory=dict)

    # Listeners.
    ws: str | None = DEFAULT_WS
    rest: str | None = DEFAULT_REST
    metrics: str | None = None
    #: Serve the web dashboard (``GET /``) and WebSocket at ``/ws`` on the REST listener.
    dashboard: bool = True
    #: Every ``tcp:`` listener becomes ``ssl:`` with this certificate and ``tls_key`` (or the same file).
    tls_cert: str | None = None
    tls_key: str | None = None
    trust_proxy: bool = False
    access_log: bool = False

    # Logins.
    auth: str = "users"
    full_group: str = "wheel"
    read_group: str = "operator"
    pam_service: str = "login"
    max_failed_logins: int = 5
    failed_login_window: float = 600.0
    max_login_checks: int = 64
    block_seconds: float = 3600.0
    token_ttl: float = 900.0

    # Connections and requests.
    idle_timeout: float = 1800.0
    auth_timeout: float = 30.0
    max_connections_per_address: int = 2000
    max_rest_connections_per_address: int = 256
    max_rest_connections: int = 4096
    request_timeout: float = 30.0
    max_message_bytes: int = 1 << 20
    max_unauthenticated_bytes: int = 64 << 10
    max_json_depth: int = 32
    max_string_chars: int = 65536
    event_backlog_bytes: int = 4 << 20
    event_backlog_seconds: float = 5.0

    # Jobs and how their processes run.
    max_pending: int = 10000
    max_jobs_per_run: int = 1000
    max_chain: int = 256
    kill_grace: float = 5.0
    #: How commands are started: ``fast`` or ``twisted`` (see docs/processes.rst).
    spawner: str = DEFAULT_SPAWNER
    job_timeout: float = 0.0
    log_cap_bytes: int = 1 << 20
    update_interval: float = 1.0

    # The job store's history.
    history_days: int = 30
    history_max_jobs: int = 100000

    # Fleet membership (docs/fleet.rst); off without ``wamp``.
    wamp: str | None = None
    wamp_realm: str = "sysadm"
    wamp_host: str | None = None
    wamp_ticket_file: str | None = None
    wamp_cra_secret_file: str | None = None
    wamp_full_role: str = "operator"
    wamp_read_role: str = "viewer"

    # Running as a service.
    #: Tell the service manager READY=1 once serving, when ``$NOTIFY_SOCKET`` is set (it is then
    #: taken out of the environment, so that jobs cannot speak for the server).
    notify: bool = True
    #: The server's own log (twistd's), reopened on SIGHUP and rotated on SIGUSR1; None: the host's.
    server_log: ServerLog | None = None

    @property
    def users_file(self) -> str:
        return self.users if self.users is not None else os.path.join(self.state_dir, "users")


#: The defaults, for the options that mirror them.
DEFAULTS = ServerConfig(state_dir="")
