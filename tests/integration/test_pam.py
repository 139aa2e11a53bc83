"""
System accounts (``--auth system``) for real: the test makes Unix groups and
users with passwords (useradd, chpasswd), a PAM service that checks them
against /etc/shadow, and logs in to a real server with them.  Skipped, with
the reason, only where PAM (or the root needed to make accounts) is absent.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import secrets
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from conftest import Server, start_server
from security_helpers import captured_log, log_text, run_root
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred

from sysadm_dispatch import tap
from sysadm_dispatch.auth.pam import SystemAuthError, groups_of, load_pam, role_from_groups
from sysadm_dispatch.auth.users import FULL, READ

ensure = pytest_twisted.ensureDeferred


def _pam_missing() -> str | None:
    try:
        import pam  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        return "python-pam is not installed (pip install 'sysadm-dispatch[pam]')"
    if not ctypes.util.find_library("pam"):
        return "libpam is not installed on this machine"
    if not any(glob.glob(f"{lib}/security/pam_unix.so") for lib in ("/lib*", "/lib*/*", "/usr/lib*", "/usr/lib*/*")):
        return "the pam_unix module is not installed on this machine"
    if not os.path.isdir("/etc/pam.d"):
        return "this machine has no /etc/pam.d"
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "userdel", "groupadd", "chpasswd", "gpasswd")):
        return "making test accounts needs root and useradd, userdel, groupadd, chpasswd and gpasswd"
    return None


PAM_MISSING = _pam_missing()
needs_pam = pytest.mark.skipif(PAM_MISSING is not None, reason=str(PAM_MISSING))


@dataclass
class Accounts:
    service: str
    full_group: str
    read_group: str
    passwords: dict[str, str]
    full: str
    read: str
    both: str
    neither: str

    def args(self, *extra: str) -> list[str]:
        return ["--auth", "system", "--pam-service", self.service, "--full-group", self.full_group,
                "--read-group", self.read_group, *extra]


@pytest.fixture(scope="module")
def accounts() -> Iterator[Accounts]:
    tag = secrets.token_hex(3)
    full_group, read_group = f"sdfull{tag}", f"sdread{tag}"
    members = {f"sdf{tag}": [full_group], f"sdr{tag}": [read_group], f"sdb{tag}": [full_group, read_group],
               f"sdn{tag}": []}
    passwords = {name: f"pw-{secrets.token_urlsafe(12)}" for name in members}
    service = f"sysadm-dispatch-test-{tag}"
    service_file = f"/etc/pam.d/{service}"
    made_users: list[str] = []
    made_groups: list[str] = []
    try:
        for group in (full_group, read_group):
            run_root("groupadd", group)
            made_groups.append(group)
        for name, groups in members.items():
            run_root("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                     *(["--groups", ",".join(groups)] if groups else []), name)
            made_users.append(name)
        run_root("chpasswd", stdin="".join(f"{n}:{p}\n" for n, p in passwords.items()))
        with open(service_file, "w") as f:
            # Passwords from /etc/shadow; no failure delay, so the tests stay quick.
            f.write("auth     required  pam_unix.so nodelay\naccount  required  pam_unix.so\n")
        names = list(members)
        yield Accounts(service, full_group, read_group, passwords, *names)
    finally:
        if os.path.exists(service_file):
            os.unlink(service_file)
        for name in made_users:
            run_root("userdel", name)
        for group in made_groups:
            run_root("groupdel", group)


async def system_server(tmp_path: Any, accounts: Accounts, *extra: str) -> Server:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # The harness reads an admin password file; with system accounts there is none to read.
    (state / "admin-password").write_text("unused\n")
    return await start_server(str(state), *accounts.args(*extra))


@pytest.fixture
def stop_later() -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        pytest_twisted.blockon(ensureDeferred(server.stop()))


# Pure parts.


def test_role_from_groups() -> None:
    assert role_from_groups({"users", "wheel"}, "wheel", "operator") == FULL
    assert role_from_groups({"operator"}, "wheel", "operator") == READ
    assert role_from_groups({"operator", "wheel"}, "wheel", "operator") == FULL
    assert role_from_groups({"users"}, "wheel", "operator") is None
    assert role_from_groups(set(), "wheel", "operator") is None


def test_groups_of_unknown_user_is_empty() -> None:
    assert groups_of("no-such-user-sysadm-dispatch") == set()


def test_missing_binding_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setitem(sys.modules, "pam", None)
    with pytest.raises(SystemAuthError) as info:
        load_pam()
    assert "pip install 'sysadm-dispatch[pam]'" in str(info.value)
    options = tap.Options()
    options.parseOptions(["--state-dir", str(tmp_path / "state"), "--auth", "system"])
    with pytest.raises(SystemExit) as exit_info:
        tap.makeService(options, reactor)
    assert "--auth system needs the python-pam package" in str(exit_info.value.code)
    assert not os.path.exists(tmp_path / "state" / "users"), "no users file is made for system accounts"


# For real.


@needs_pam
def test_groups_of_a_real_user(accounts: Accounts) -> None:
    assert {accounts.full_group, accounts.read_group} <= groups_of(accounts.both)
    assert accounts.full_group not in groups_of(accounts.read)


@needs_pam
@ensure
async def test_system_accounts_log_in_with_roles_from_groups(
        accounts: Accounts, tmp_path: Any, stop_later: list[Server]) -> None:
    server = await system_server(tmp_path, accounts)
    stop_later.append(server)
    pw = accounts.passwords
    with captured_log() as events:
        # A member of the full group may run, over WebSocket and REST.
        client = await server.ws(login=(accounts.full, pw[accounts.full]))
        assert (await client.call("query"))["args"]["rpc/dispatcher"] == "read/write"
        reply = await client.call("dispatcher", {"action": "run", "pam-ws": "echo hi"})
        assert reply["args"] == {"started": ["pam-ws"]}
        status, body, _ = await server.rest({"action": "run", "pam-rest": "true"}, auth=(accounts.both,
                                                                                          pw[accounts.both]))
        assert status == 200 and body["args"]["started"] == ["pam-rest"]
        # A member of the read group may look, not run.
        reader = await server.ws(login=(accounts.read, pw[accounts.read]))
        assert (await reader.call("query"))["args"]["rpc/dispatcher"] == "read"
        assert (await reader.call("dispatcher", {"action": "list"}))["name"] == "response"
        assert (await reader.call("dispatcher", {"action": "run", "x": "true"}))["args"]["code"] == 403
        # A member of neither is refused, with the right password; so are wrong passwords.
        anonymous = await server.ws(login=None)
        for username, password in ((accounts.neither, pw[accounts.neither]), (accounts.full, "wrong"),
                                   ("no-such-user-zz", "x"), (accounts.full, pw[accounts.read])):
            reply = await anonymous.login(username, password)
            assert reply["args"]["code"] == 401, (username, reply)
        status, _, _ = await server.rest({"action": "list"}, auth=(accounts.neither, pw[accounts.neither]))
        assert status == 401
    text = log_text(events)
    assert f"system login refused for '{accounts.neither}': in neither group" in text
    assert all(password not in text for password in pw.values())


@needs_pam
@ensure
async def test_pam_runs_off_the_reactor_thread_in_its_own_pool(
        accounts: Accounts, tmp_path: Any, stop_later: list[Server]) -> None:
    server = await system_server(tmp_path, accounts)
    stop_later.append(server)
    checker = server.router.auth.checker
    threads: list[str] = []
    original = checker._check

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(*args)

    checker._check = recording
    await server.ws(login=(accounts.full, accounts.passwords[accounts.full]))
    assert threads and threads[0] != threading.main_thread().name
    assert "sysadm-dispatch-pam" in threads[0]


@needs_pam
@ensure
async def test_failed_system_logins_are_counted(accounts: Accounts, tmp_path: Any, stop_later: list[Server]) -> None:
    server = await system_server(tmp_path, accounts, "--max-failed-logins", "2")
    stop_later.append(server)
    client = await server.ws(login=None)
    assert (await client.login(accounts.full, "wrong"))["args"]["code"] == 401
    assert (await client.login(accounts.full, "wrong again"))["args"]["code"] == 401
    reply = await client.login(accounts.full, accounts.passwords[accounts.full])
    assert reply["args"]["code"] == 403


@needs_pam
@ensure
async def test_leaving_the_group_ends_access(accounts: Accounts, tmp_path: Any, stop_later: list[Server]) -> None:
    server = await system_server(tmp_path, accounts)
    stop_later.append(server)
    name, password = accounts.read, accounts.passwords[accounts.read]
    client = await server.ws(login=(name, password))
    token = (await client.login(name, password))["args"][0]
    run_root("gpasswd", "-d", name, accounts.read_group)
    try:
        other = await server.ws(login=None)
        assert (await other.login(name, password))["args"]["code"] == 401
        # Tokens of a user who no longer has a role stop working too.
        assert (await other.call("auth_token", {"token": token}))["args"]["code"] == 401
        assert (await client.call("dispatcher", {"action": "list"}))["args"]["code"] == 401
    finally:
        run_root("gpasswd", "-a", name, accounts.read_group)


@needs_pam
@ensure
async def test_a_role_change_is_noticed_at_the_next_token_use(
    accounts: Accounts, tmp_path: Any, stop_later: list[Server]
) -> None:
    # A full user moved to the read group: the next use of a token reads the
    # groups again (in the background), and the user's tokens and sessions end.
    from conftest import poll, with_timeout

    server = await system_server(tmp_path, accounts)
    stop_later.append(server)
    name, password = accounts.full, accounts.passwords[accounts.full]
    client = await server.ws(login=(name, password))
    assert (await client.call("subscribe", ["dispatcher"], namespace="events"))["name"] == "response"
    token = (await client.login(name, password))["args"][0]
    run_root("gpasswd", "-d", name, accounts.full_group)
    run_root("gpasswd", "-a", name, accounts.read_group)
    try:
        server.router.auth.checker._refreshed.clear()  # not "read lately": the next use reads
        other = await server.ws(login=None)
        await other.call("auth_token", {"token": token})
        message = await with_timeout(client.unmatched.get(), 20)
        assert message["name"] == "error" and message["args"]["code"] == 401, message
        assert (await other.call("dispatcher", {"action": "list"}))["args"]["code"] == 401
        await poll(lambda: server.router.auth.checker.role_of(name) == READ, 20)
        # Logging in again gives the new role.
        assert (await other.login(name, password))["name"] == "response"
        reply = await other.call("dispatcher", {"action": "run", "nope": "true"})
        assert reply["args"]["code"] == 403
    finally:
        run_root("gpasswd", "-d", name, accounts.read_group)
        run_root("gpasswd", "-a", name, accounts.full_group)
