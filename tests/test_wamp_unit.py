"""The WAMP transport's pure parts: options, the secret file, roles from the caller."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.python import usage

from sysadm_dispatch import tap
from sysadm_dispatch.auth import FULL, READ, UsersFileError
from sysadm_dispatch.rpc import RPCError
from sysadm_dispatch.wamp import WampHost, read_secret


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
    host = WampHost(SimpleNamespace(), "ws://127.0.0.1:1/", host="h", ticket="t")  # type: ignore[arg-type]
    operator = host.session_for(SimpleNamespace(caller_authid="alice", caller_authrole="operator"))
    assert (operator.user.name, operator.user.role, operator.transport) == ("alice", FULL, "wamp")  # type: ignore[union-attr]
    viewer = host.session_for(SimpleNamespace(caller_authid="bob", caller_authrole="viewer"))
    assert viewer.user.role == READ  # type: ignore[union-attr]
    for details in (SimpleNamespace(caller_authid="x", caller_authrole="agent"),
                    SimpleNamespace(caller_authid=None, caller_authrole=None)):
        with pytest.raises(RPCError) as refused:
            host.session_for(details)
        assert refused.value.code == 403
