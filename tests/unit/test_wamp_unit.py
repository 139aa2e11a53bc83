"""The WAMP transport's pure parts: options, the secret file, roles from the caller."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from sysadm_dispatch import tap
from sysadm_dispatch.api.router import RPCError
from sysadm_dispatch.auth.users import FULL, READ, UsersFileError
from sysadm_dispatch.transports.wamp import WampHost, read_secret


def parse(tmp_path: Any, *args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(["--state-dir", str(tmp_path / "state"), *args])
    return options


def secret_file(tmp_path: Any, mode: int = 0o600, text: str = "s3cret\n") -> str:
    path = tmp_path / "ticket"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_wamp_options_defaults(tmp_path: Any) -> None:
    options = parse(tmp_path, "--wamp", "ws://127.0.0.1:12160/", "--wamp-ticket-file", secret_file(tmp_path))
    assert options["wamp-realm"] == "sysadm"
    assert options["wamp-host"]
    assert (options["wamp-full-role"], options["wamp-read-role"]) == ("operator", "viewer")


@pytest.mark.parametrize("args, message", [
    (["--wamp", "http://x/"], "the router's URL must be"),
    (["--wamp", "ws://x/", "--wamp-host", "a.b"], "a host name has"),
    (["--wamp", "ws://x/", "--wamp-host", ""], "a host name has"),
    (["--wamp", "ws://x/", "--wamp-realm", ".x"], "realm"),
    (["--wamp", "ws://x/"], "needs one of --wamp-ticket-file or --wamp-cra-secret-file"),
    (["--wamp-host", "web1"], "--wamp-host needs --wamp"),
    (["--wamp", "ws://x/", "--wamp-full-role", "viewer"], "must differ"),
])
def test_bad_wamp_options(tmp_path: Any, args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        parse(tmp_path, *args)


def test_both_secrets_refused(tmp_path: Any) -> None:
    path = secret_file(tmp_path)
    with pytest.raises(usage.UsageError, match="one of"):
        parse(tmp_path, "--wamp", "ws://x/", "--wamp-ticket-file", path, "--wamp-cra-secret-file", path)


def test_secret_file_is_mode_checked(tmp_path: Any) -> None:
    assert read_secret(secret_file(tmp_path)) == "s3cret"
    with pytest.raises(UsersFileError, match="writable by group or others"):
        read_secret(secret_file(tmp_path, 0o666))
    with pytest.raises(UsersFileError, match="empty"):
        read_secret(secret_file(tmp_path, text="\n"))


def test_a_bad_secret_file_stops_the_server_with_one_line(tmp_path: Any) -> None:
    options = parse(tmp_path, "--wamp", "ws://127.0.0.1:1/", "--wamp-ticket-file", secret_file(tmp_path, 0o622))
    with pytest.raises(SystemExit, match="cannot use the WAMP secret file"):
        tap.makeService(options)


def test_roles_come_from_the_callers_authrole() -> None:
    host = WampHost(SimpleNamespace(), "ws://127.0.0.1:1/", host="h", ticket="t", reactor=MemoryReactorClock())  # type: ignore[arg-type]
    operator = host.session_for(SimpleNamespace(caller_authid="alice", caller_authrole="operator"))
    assert (operator.user.name, operator.user.role, operator.transport) == ("alice", FULL, "wamp")  # type: ignore[union-attr]
    viewer = host.session_for(SimpleNamespace(caller_authid="bob", caller_authrole="viewer"))
    assert viewer.user.role == READ  # type: ignore[union-attr]
    for details in (SimpleNamespace(caller_authid="x", caller_authrole="agent"),
                    SimpleNamespace(caller_authid=None, caller_authrole=None)):
        with pytest.raises(RPCError) as refused:
            host.session_for(details)
        assert refused.value.code == 403


# The client's router settings.

def router_args(**given: Any) -> Any:
    from argparse import Namespace

    values = {"router": None, "router_user": None, "router_ticket_file": None, "router_secret_file": None,
              "host": [], "all": False}
    values.update(given)
    return Namespace(**values)


def test_router_from_flags_env_and_config(tmp_path: Any) -> None:
    from sysadm_dispatch.client.fleet import resolve_router

    assert resolve_router(router_args(), {}, {}) is None
    ticket = tmp_path / "t"
    ticket.write_text("from-file\n")
    flags = resolve_router(router_args(router="ws://r:1/", router_user="alice", router_ticket_file=str(ticket)),
                           {"SYSADM_DISPATCH_ROUTER": "ws://other:2/"}, {})
    assert (flags.url, flags.authid, flags.ticket, flags.secret) == ("ws://r:1/", "alice", "from-file", None)
    env = resolve_router(router_args(), {"SYSADM_DISPATCH_ROUTER": "ws://e:1/", "SYSADM_DISPATCH_ROUTER_USER": "bob",
                                         "SYSADM_DISPATCH_ROUTER_SECRET": "cra"}, {"router": "ws://c:1/"})
    assert (env.url, env.authid, env.ticket, env.secret) == ("ws://e:1/", "bob", None, "cra")
    config = resolve_router(router_args(), {}, {"router": "wss://c:1/", "router_user": "carol",
                                                "router_secret_file": str(ticket)})
    assert (config.url, config.authid, config.secret) == ("wss://c:1/", "carol", "from-file")


@pytest.mark.parametrize("given, env, message", [
    ({"all": True}, {}, "need a router"),
    ({"router": "ws://r:1/"}, {}, "needs a principal"),
    ({"router": "ws://r:1/", "router_user": "a"}, {}, "needs a ticket or a WAMP-CRA secret"),
    ({"router": "ws://r:1/", "router_user": "a", "host": ["a.b"]}, {"SYSADM_DISPATCH_ROUTER_TICKET": "t"},
     "a host name"),
])
def test_router_settings_refused(given: dict[str, Any], env: dict[str, str], message: str) -> None:
    from sysadm_dispatch.client.errors import ClientError
    from sysadm_dispatch.client.fleet import resolve_router

    with pytest.raises(ClientError, match=message) as refused:
        resolve_router(router_args(**given), env, {})
    assert refused.value.code == 2
