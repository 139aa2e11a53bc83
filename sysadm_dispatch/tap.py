"""
``twistd sysadm-dispatch``: its options, and ``makeService``, which gives
them to the composition root (``server.make_server``).
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any, cast

from twisted.python import usage

from .auth.users import default_state_dir
from .config import DEFAULT_REST, DEFAULT_WS, ServerConfig
from .core.spec import DEFAULT_QUEUES
from .listeners import tls_endpoint
from .ops.serverlog import FORMATS, ServerLog
from .process.backends import DEFAULT_SPAWNER, SPAWNERS
from .reactors import IServerReactor
from .server import STORE_FILE, Server, make_server

__all__ = ["STORE_FILE", "Options", "makeService", "server_config"]


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



def _server_log(options: Options) -> ServerLog | None:
    """The log of a server run by ``twistd`` (None otherwise, or when twistd is told to log elsewhere)."""
    twistd = getattr(options, "parent", None)
    if twistd is None or twistd.get("logger") or twistd.get("syslog"):
        return None
    try:
        return ServerLog(options["log-format"], twistd.get("logfile") or "", bool(twistd.get("nodaemon")))
    except OSError as e:
        raise SystemExit(f"sysadm-dispatch: cannot open the log file: {e}") from None


def server_config(options: Options) -> ServerConfig:
    """The ``ServerConfig`` of parsed options: each field from the option of the same name."""
    given = {f.name: options[f.name.replace("_", "-")] for f in fields(ServerConfig)
             if f.name.replace("_", "-") in options}
    return ServerConfig(**{**given, "queues": options["queues"], "dashboard": not options["no-dashboard"],
                           "trust_proxy": bool(options["trust-proxy"]), "access_log": bool(options["access-log"]),
                           "server_log": _server_log(options)})


def makeService(options: Options, reactor: IServerReactor | None = None) -> Server:
    """The server for ``twistd``: the one place that takes the global reactor (unless one is given)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return make_server(cast(IServerReactor, global_reactor), server_config(options))
    return make_server(reactor, server_config(options))
