"""
Tests of the ``sysadm-dispatch`` console script (user administration).

The script is run for real, as ``python -m sysadm_dispatch.cli`` and as the
installed ``sysadm-dispatch`` entry point, with the password on a pipe.  A
run costs most of a second (the package imports the whole server stack), so
the runs are started together, once per module, and each test looks at the
runs it is about; the remaining cases call ``cli.main`` in-process.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from sysadm_dispatch import cli
from sysadm_dispatch.auth.users import FULL, READ, UserEntry, read_users, verify_password, write_users

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = [sys.executable, "-m", "sysadm_dispatch.cli"]
_SCRIPT = shutil.which("sysadm-dispatch", path=os.path.dirname(sys.executable))
SCRIPT = [_SCRIPT] if _SCRIPT else None


def cheap_hash(password: str) -> str:
    """A hash in the users file's format with tiny scrypt costs."""
    salt = b"fedcba9876543210"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2, r=1, p=1, dklen=32)
    return f"scrypt$2$1$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


ALICE_OLD = UserEntry("alice", FULL, cheap_hash("old alice"))
BOB = UserEntry("bob", READ, cheap_hash("bob pw"))


@dataclass
class Run:
    """One finished run of the script, in a directory of its own."""

    directory: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def users_path(self) -> str:
        return os.path.join(self.directory, "users")


@dataclass
class Case:
    argv: list[str]
    stdin: str = ""
    users: dict[str, UserEntry] | None = None  # the users file before the run, if any


def cases() -> dict[str, Case]:
    return {
        "add": Case(["user", "add", "alice", "--role", "full"], "s3cret pass\n"),
        "add_exists": Case(["user", "add", "alice", "--role", "read"], "new pw\n", {"alice": ALICE_OLD}),
        "remove": Case(["user", "remove", "alice"], users={"alice": ALICE_OLD, "bob": BOB}),
        "list": Case(["user", "list"], users={"alice": ALICE_OLD, "bob": BOB}),
    }


#: Which cases run through each entry point: few, as each run costs most of
#: a second of CPU.  Every case is also covered in-process below.
SUBPROCESS_CASES = {
    "module": ["add", "add_exists", "list"],
    "script": ["add", "remove"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Run]:
    """Every subprocess run, started at once and collected."""
    commands = {"module": MODULE, "script": SCRIPT}
    started: dict[tuple[str, str], tuple[subprocess.Popen[str], str, str]] = {}
    for entry, names in SUBPROCESS_CASES.items():
        command = commands[entry]
        if command is None:
            continue
        for name in names:
            case = cases()[name]
            directory = str(tmp_path_factory.mktemp(f"{entry}-{name}"))
            if case.users is not None:
                write_users(os.path.join(directory, "users"), case.users)
            argv = [*case.argv, "--users", os.path.join(directory, "users")]
            env = dict(os.environ, PYTHONPATH=REPO, XDG_STATE_HOME=os.path.join(directory, "xdg"))
            process = subprocess.Popen(command + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env, cwd=directory)
            started[(entry, name)] = (process, directory, case.stdin)
    results = {}
    try:
        for key, (process, directory, stdin) in started.items():
            out, err = process.communicate(stdin, timeout=60)
            results[key] = Run(directory, process.returncode, out, err)
    finally:
        for process, _, _ in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def get_run(runs: dict[tuple[str, str], Run], entry: str, name: str) -> Run:
    if entry == "script" and SCRIPT is None:
        pytest.skip("the sysadm-dispatch script is not installed beside this interpreter")
    return runs[(entry, name)]


def entries(name: str) -> Any:
    return pytest.mark.parametrize("entry", [e for e, names in SUBPROCESS_CASES.items() if name in names])


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@entries("add")
def test_add(runs: dict[tuple[str, str], Run], entry: str) -> None:
    run = get_run(runs, entry, "add")
    assert run.returncode == 0, run.stderr
    assert "alice" in run.stdout and run.users_path in run.stdout
    users = read_users(run.users_path)
    assert list(users) == ["alice"] and users["alice"].role == FULL
    assert verify_password("s3cret pass", users["alice"].password_hash), "the newline is not part of the password"
    assert not verify_password("s3cret pass\n", users["alice"].password_hash)
    assert mode(run.users_path) == 0o600
    with open(run.users_path) as f:
        assert "s3cret" not in f.read()


@entries("add_exists")
def test_add_existing_without_replace_fails(runs: dict[tuple[str, str], Run], entry: str) -> None:
    run = get_run(runs, entry, "add_exists")
    assert run.returncode != 0
    assert "alice" in run.stderr and "--replace" in run.stderr
    assert read_users(run.users_path) == {"alice": ALICE_OLD}, "the users file must be left as it was"


@entries("remove")
def test_remove(runs: dict[tuple[str, str], Run], entry: str) -> None:
    run = get_run(runs, entry, "remove")
    assert run.returncode == 0, run.stderr
    assert "alice" in run.stdout
    assert read_users(run.users_path) == {"bob": BOB}
    assert mode(run.users_path) == 0o600


@entries("list")
def test_list(runs: dict[tuple[str, str], Run], entry: str) -> None:
    run = get_run(runs, entry, "list")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "alice\tfull\nbob\tread\n"


# In-process: the same main() the script calls.


def main(argv: list[str], stdin: str = "") -> tuple[int, str]:
    """Run ``cli.main``; returns (exit status, the SystemExit message or "")."""
    sys.stdin = io.StringIO(stdin)
    try:
        return cli.main(argv), ""
    except SystemExit as e:
        if isinstance(e.code, str):
            return 1, e.code
        return int(e.code or 0), ""


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(sys, "stdin", sys.stdin)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_main_lifecycle(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    users = str(tmp_path / "users")
    assert main(["user", "add", "alice", "--role", "full", "--users", users], "pw1\n") == (0, "")
    status, message = main(["user", "add", "alice", "--role", "read", "--users", users], "pw2\n")
    assert status == 1 and "exists already" in message
    assert main(["user", "add", "alice", "--role", "read", "--replace", "--users", users], "pw2") == (0, "")
    assert main(["user", "add", "bob", "--role", "full", "--users", users], "pw3\n") == (0, "")
    capsys.readouterr()
    assert main(["user", "list", "--users", users]) == (0, "")
    assert capsys.readouterr().out == "alice\tread\nbob\tfull\n"
    saved = read_users(users)
    assert verify_password("pw2", saved["alice"].password_hash), "a password without a newline is read whole"
    assert not verify_password("pw1", saved["alice"].password_hash)
    assert verify_password("pw3", saved["bob"].password_hash)
    assert main(["user", "remove", "alice", "--users", users]) == (0, "")
    assert list(read_users(users)) == ["bob"]
    assert mode(users) == 0o600


def test_main_default_users_file_is_the_servers(tmp_path: Any) -> None:
    assert main(["user", "add", "dave", "--role", "read"], "pw\n") == (0, "")
    path = tmp_path / "xdg" / "sysadm-dispatch" / "users"
    assert list(read_users(str(path))) == ["dave"]
    assert mode(str(path)) == 0o600


@pytest.mark.parametrize("name", ["bad name", "", "a:b", "x" * 65, ".dot", "new\nline"])
def test_main_invalid_names(tmp_path: Any, name: str) -> None:
    status, message = main(["user", "add", name, "--role", "full", "--users", str(tmp_path / "users")], "pw\n")
    assert status == 1 and "not a valid user name" in message
    assert not (tmp_path / "users").exists()


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_main_empty_password(tmp_path: Any, stdin: str) -> None:
    status, message = main(["user", "add", "carol", "--role", "read", "--users", str(tmp_path / "users")], stdin)
    assert status == 1 and "must not be empty" in message
    assert not (tmp_path / "users").exists()


def test_main_bad_role(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = main(["user", "add", "carol", "--role", "wheel", "--users", str(tmp_path / "users")], "pw\n")
    assert status == 2 and "invalid choice: 'wheel'" in capsys.readouterr().err
    status, _ = main(["user", "add", "carol", "--users", str(tmp_path / "users")], "pw\n")
    assert status == 2 and "--role" in capsys.readouterr().err


def test_main_remove_unknown_user(tmp_path: Any) -> None:
    users = str(tmp_path / "users")
    write_users(users, {"bob": BOB})
    status, message = main(["user", "remove", "alice", "--users", users])
    assert status == 1 and "'alice'" in message
    assert read_users(users) == {"bob": BOB}


@pytest.mark.parametrize("action", [["remove", "alice"], ["list"]])
def test_main_missing_users_file(tmp_path: Any, action: list[str]) -> None:
    status, message = main(["user", *action, "--users", str(tmp_path / "none")])
    assert status == 1 and "no users file" in message


def test_main_broken_users_file(tmp_path: Any) -> None:
    users = tmp_path / "users"
    users.write_text("alice:full:h\nnot a user line\n")
    status, message = main(["user", "add", "bob", "--role", "read", "--users", str(users)], "pw\n")
    assert status == 1 and "line 2" in message
    assert users.read_text() == "alice:full:h\nnot a user line\n", "a broken file must not be overwritten"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answers", "ok"), [(["pw", "pw"], True), (["pw", "pW"], False)])
def test_main_prompts_twice_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, answers: list[str], ok: bool
) -> None:
    prompts: list[str] = []
    replies = iter(answers)

    def getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(replies)

    monkeypatch.setattr(cli.getpass, "getpass", getpass)
    users = str(tmp_path / "users")
    monkeypatch.setattr(sys, "stdin", _Terminal())
    try:
        status = cli.main(["user", "add", "erin", "--role", "read", "--users", users])
        message = ""
    except SystemExit as e:
        status, message = 1, str(e.code)
    assert len(prompts) == 2
    if ok:
        assert status == 0 and verify_password("pw", read_users(users)["erin"].password_hash)
    else:
        assert status == 1 and "do not match" in message and not os.path.exists(users)
