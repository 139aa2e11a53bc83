"""
The client's pure parts: settings resolution, exit codes, following output,
durations, tables, completion scripts, and what the console script imports.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from datetime import datetime
from typing import Any

import pytest

from sysadm_dispatch import cli
from sysadm_dispatch.auth import users as auth
from sysadm_dispatch.client import config, errors, format, jobs
from sysadm_dispatch.client.completion import script

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "sysadm_dispatch", "client")


# Settings: flags, environment, config file, local default.


def resolve(tmp_path: Any, env: dict[str, str] | None = None, prompt: Any = None, **flags: Any) -> config.Target:
    base = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    options: dict[str, Any] = {"url": None, "user": None, "password_file": None, "cafile": None, "insecure": False}
    options.update(flags)
    return config.resolve(env={**base, **(env or {})}, state_dir=lambda: str(tmp_path / "state"),
                          prompt=prompt, **options)


def write_config(tmp_path: Any, text: str, mode: int = 0o600) -> str:
    directory = tmp_path / "cfg" / "sysadm-dispatch"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "client.conf"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_flags_beat_environment_beat_config(tmp_path: Any) -> None:
    (tmp_path / "pw-flag").write_text("from flag\n")
    (tmp_path / "pw-conf").write_text("from config\n")
    write_config(tmp_path, f"url = ws://config:1\nuser = conf\npassword_file = {tmp_path / 'pw-conf'}\n"
                           "cafile = /conf/ca.pem\n")
    env = {"SYSADM_DISPATCH_URL": "ws://env:2", "SYSADM_DISPATCH_USER": "envuser",
           "SYSADM_DISPATCH_PASSWORD": "from env"}
    assert resolve(tmp_path) == config.Target("ws://config:1", "conf", "from config", "/conf/ca.pem")
    assert resolve(tmp_path, env) == config.Target("ws://env:2", "envuser", "from env", "/conf/ca.pem")
    flagged = resolve(tmp_path, env, url="wss://flag:3", user="flaguser", password_file=str(tmp_path / "pw-flag"),
                      cafile="/flag/ca.pem")
    assert flagged == config.Target("wss://flag:3", "flaguser", "from flag", "/flag/ca.pem")
    assert flagged.secure


def test_config_in_a_section_and_password_key(tmp_path: Any) -> None:
    write_config(tmp_path, "[client]\nuser = sam\npassword = inline\n")
    target = resolve(tmp_path)
    assert (target.user, target.password, target.url) == ("sam", "inline", config.DEFAULT_URL)


def test_config_naming_a_password_must_be_private(tmp_path: Any) -> None:
    write_config(tmp_path, "password_file = /x\n", mode=0o640)
    with pytest.raises(errors.ClientError) as e:
        resolve(tmp_path)
    assert e.value.code == errors.NO_PERMISSION
    assert "chmod 600" in e.value.message


def test_config_without_password_may_be_readable(tmp_path: Any) -> None:
    write_config(tmp_path, "url = ws://h:5\n", mode=0o644)
    assert resolve(tmp_path, {"SYSADM_DISPATCH_PASSWORD": "p"}).url == "ws://h:5"


@pytest.mark.parametrize("text, needle", [
    ("colour = blue\n", "unknown key 'colour'"),
    ("[other]\nurl = ws://x\n", "unknown section [other]"),
    ("url\n", "not valid"),
])
def test_bad_config_is_a_usage_error(tmp_path: Any, text: str, needle: str) -> None:
    write_config(tmp_path, text)
    with pytest.raises(errors.ClientError) as e:
        resolve(tmp_path, {"SYSADM_DISPATCH_PASSWORD": "p"})
    assert e.value.code == errors.USAGE
    assert needle in e.value.message


@pytest.mark.parametrize("url", ["http://h", "ws://", "h:1", "ws://h:notaport"])
def test_bad_url(tmp_path: Any, url: str) -> None:
    with pytest.raises(errors.ClientError) as e:
        resolve(tmp_path, {"SYSADM_DISPATCH_PASSWORD": "p"}, url=url)
    assert e.value.code == errors.USAGE


def test_local_default_reads_the_servers_admin_password(tmp_path: Any) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "admin-password").write_text("local secret\n")
    assert resolve(tmp_path) == config.Target(config.DEFAULT_URL, "admin", "local secret")
    # Not for another user, nor for another host: those are asked for.
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "typed"

    assert resolve(tmp_path, prompt=prompt, user="bob").password == "typed"
    assert resolve(tmp_path, prompt=prompt, url="ws://elsewhere:1").password == "typed"
    assert asked == ["Password for bob at ws://127.0.0.1:12150: ", "Password for admin at ws://elsewhere:1: "]


def test_no_password_without_terminal_is_77(tmp_path: Any) -> None:
    with pytest.raises(errors.ClientError) as e:
        resolve(tmp_path)
    assert e.value.code == errors.NO_PERMISSION
    assert "no terminal" in e.value.message


def test_empty_or_missing_password_file(tmp_path: Any) -> None:
    (tmp_path / "empty").write_text("\n")
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(errors.ClientError) as e:
            resolve(tmp_path, password_file=str(path))
        assert e.value.code == errors.NO_PERMISSION


def test_insecure_from_config(tmp_path: Any) -> None:
    write_config(tmp_path, "insecure = yes\n")
    assert resolve(tmp_path, {"SYSADM_DISPATCH_PASSWORD": "p"}).insecure
    write_config(tmp_path, "insecure = maybe\n")
    with pytest.raises(errors.ClientError):
        resolve(tmp_path, {"SYSADM_DISPATCH_PASSWORD": "p"})


# Exit codes.


def record(codes: list[int | None], **fields: Any) -> dict[str, Any]:
    commands = [f"cmd{i}" for i in range(len(codes))]
    details: dict[str, Any] = {"cmd_list": commands}
    for command, code in zip(commands, codes, strict=True):
        if code is not None:
            details[f"return_codes/{command}"] = str(code)
    ok = all(c == 0 for c in codes) and not fields
    return {"state": "finished", "success": "true" if ok else "false", "process_details": details, **fields}


@pytest.mark.parametrize("rec, code", [
    (record([0, 0]), 0),
    (record([0, 3, None]), 3),
    (record([0, 0], timed_out=True, killed=False, signal="SIGTERM"), 124),
    (record([143], killed=True, signal="SIGTERM"), 143),
    (record([137], killed=True, signal="SIGKILL", escalated=True), 137),
    (record([0], killed=True, signal=None), 143),       # trapped TERM and exited 0
    (record([None], killed=True, signal=None), 143),    # killed while pending
    (record([139], signal="SIGSEGV"), 139),             # died by itself
    (record([None], interrupted=True, signal=None), 1),
    (record([None], interrupted=True, signal="SIG40"), 168),
    (record([127]), 127),
])
def test_exit_code(rec: dict[str, Any], code: int) -> None:
    assert jobs.exit_code(rec) == code


def test_outcome_words() -> None:
    assert jobs.outcome(record([0])) == "ok"
    assert jobs.outcome(record([1])) == "failed"
    assert jobs.outcome(record([143], killed=True)) == "killed"
    assert jobs.outcome(record([143], timed_out=True)) == "timed-out"


@pytest.mark.parametrize("status, code", [(401, 77), (403, 77), (404, 1), (400, 2), (413, 2), (503, 75), (500, 70)])
def test_exit_code_for_server_errors(status: int, code: int) -> None:
    assert errors.exit_code_for_status(status) == code


def test_signal_numbers() -> None:
    assert jobs.signal_number("SIGTERM") == 15
    assert jobs.signal_number("SIG40") == 40
    assert jobs.signal_number(None) is None
    assert jobs.signal_number("bogus") is None


def test_job_id_is_readable_and_unique() -> None:
    stamp = datetime(2026, 1, 2, 3, 4, 5).timestamp()
    first = jobs.new_job_id("build01.example.org", stamp)
    assert first.startswith("cli-build01-20260102-030405-")
    assert first != jobs.new_job_id("build01.example.org", stamp)


def test_env_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HERE", "here")
    assert jobs.env_pairs(["A=1", "B=x=y", "C=", "FROM_HERE"]) == {"A": "1", "B": "x=y", "C": "", "FROM_HERE": "here"}
    monkeypatch.delenv("FROM_HERE")
    with pytest.raises(ValueError):
        jobs.env_pairs(["FROM_HERE"])


# Following output.


def event(state: str, commands: list[str], current: str | None = None, **outputs: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"cmd_list": commands, **outputs}
    if current:
        details["current_cmd"] = current
    return {"state": state, "process_id": "j", "process_details": details}


def texts(pieces: list[jobs.Piece]) -> list[tuple[str, bool]]:
    return [(p.text, p.header) for p in pieces]


def test_tracker_streams_updates_then_the_rest() -> None:
    tracker = jobs.OutputTracker("j")
    chain = ["a", "b"]
    assert texts(tracker.feed(event("pending", chain))) == []
    assert texts(tracker.feed(event("running", chain, "a"))) == [("==> [1/2] a", True)]
    assert texts(tracker.feed(event("running", chain, "a", a="one\n"))) == [("one\n", False)]
    update = event("running", chain, "b", a="two\n", b="three\n", **{"return_codes/a": "0"})
    assert texts(tracker.feed(update)) == [("two\n", False), ("==> [2/2] b", True), ("three\n", False)]
    final = event("finished", chain, a="one\ntwo\n", b="three\nfour\n", **{"return_codes/a": "0", "return_codes/b": "0"})
    assert texts(tracker.feed(final)) == [("four\n", False)]


def test_tracker_announces_commands_that_printed_nothing() -> None:
    tracker = jobs.OutputTracker("j")
    chain = ["a", "b", "c", "d"]
    assert texts(tracker.feed(event("running", chain, "a", a="one\n"))) == [("==> [1/4] a", True), ("one\n", False)]
    # b ran and ended between two updates without output; c prints.
    update = event("running", chain, "c", a="", c="three\n", **{"return_codes/a": "0", "return_codes/b": "0"})
    assert texts(tracker.feed(update)) == [("==> [2/4] b", True), ("==> [3/4] c", True), ("three\n", False)]
    # d ran without output and failed: announced at the end.
    codes = {"return_codes/a": "0", "return_codes/b": "0", "return_codes/c": "0", "return_codes/d": "1"}
    final = event("finished", chain, a="one\n", b="", c="three\n", d="", **codes)
    assert texts(tracker.feed(final)) == [("==> [4/4] d", True)]


def test_tracker_announces_no_command_that_did_not_run() -> None:
    tracker = jobs.OutputTracker("j")
    chain = ["a", "b", "c"]
    final = event("finished", chain, a="", b="", **{"return_codes/a": "0", "return_codes/b": "2"})
    assert texts(tracker.feed(final)) == [("==> [1/3] a", True), ("==> [2/3] b", True)]


def test_tracker_single_command_has_no_header() -> None:
    tracker = jobs.OutputTracker("j")
    assert texts(tracker.feed(event("finished", ["a"], a="x\n"))) == [("x\n", False)]


def test_tracker_attached_late_skips_earlier_commands_and_printed_output() -> None:
    tracker = jobs.OutputTracker("j", attached_at=1)
    chain = ["a", "b"]
    update = event("running", chain, "b", b="later\n", **{"return_codes/a": "0"})
    assert texts(tracker.feed(update)) == [("==> [2/2] b", True), ("later\n", False)]
    final = event("finished", chain, a="old\n", b="early\nlater\nlast\n")
    assert texts(tracker.feed(final)) == [("last\n", False)]


def test_tracker_log_cut_in_the_middle() -> None:
    tracker = jobs.OutputTracker("j")
    tracker.feed(event("running", ["a"], "a", a="x" * 300 + "tail-1\n"))
    final = event("finished", ["a"], a="x" * 100 + "[... dropped ...]" + "x" * 100 + "tail-1\nend\n")
    assert texts(tracker.feed(final)) == [("end\n", False)]


# Durations, times, tables.


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("1h30m", 5400),
    ("0.5", 0.5), ("1.5h", 5400), (" 2H ", 7200),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert format.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "2x", "1h-", "-5m", "two hours"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        format.parse_duration(text)


@pytest.mark.parametrize("seconds, text", [(0.43, "0.4s"), (12, "12s"), (185, "3m05s"), (7620, "2h07m"),
                                           (273600, "3d04h")])
def test_human_duration(seconds: float, text: str) -> None:
    assert format.human_duration(seconds) == text


def test_short_time() -> None:
    today = datetime(2026, 1, 2, 12, 0).astimezone()
    assert format.short_time(datetime(2026, 1, 2, 9, 8, 7).astimezone().isoformat(), today) == "09:08:07"
    assert format.short_time(datetime(2025, 12, 31, 9, 8).astimezone().isoformat(), today) == "2025-12-31 09:08"
    assert format.short_time(None) == "-"


def test_table_aligns_and_colours_one_column() -> None:
    lines = format.table(["A", "STATE", "C"], [["x", "running", "cmd"], ["longer", "pending", "c2"]])
    assert lines == ["A       STATE    C", "x       running  cmd", "longer  pending  c2"]
    coloured = format.table(["A", "STATE", "C"], [["x", "running", "cmd"]], colour_column=1, colour=True)
    assert coloured[1] == "x  \x1b[32mrunning\x1b[0m  cmd"


def test_list_rows_order_running_first_then_position() -> None:
    listing = {
        "pkg_queue": {
            "b": {"commands": ["pkg b"], "state": "pending", "queue_position": "2"},
            "c": {"commands": ["pkg c"], "state": "pending", "queue_position": "1"},
            "a": {"commands": ["x", "pkg a"], "state": "running", "queue_position": "0", "current_cmd": "pkg a",
                  "time_started": "2026-01-02T03:04:05+00:00"},
        },
        "no_queue": {"n": {"commands": ["sleep 1"], "state": "running"}},
    }
    rows = format.list_rows(listing)
    assert [r[:4] for r in rows] == [["no_queue", "n", "running", "-"], ["pkg_queue", "a", "running", "0"],
                                     ["pkg_queue", "c", "pending", "1"], ["pkg_queue", "b", "pending", "2"]]
    assert rows[1][5] == "pkg a"
    assert rows[3][4] == "-"


def test_logs_rows_newest_first() -> None:
    def rec(job: str, start: str, end: str, **fields: Any) -> dict[str, Any]:
        r = record([0], **fields)
        r["process_id"] = job
        r["queue"] = "no_queue"
        r["process_details"].update(time_started=start, time_finished=end)
        return r

    records = {
        "2026-01-02T10:00:00.000001+00:00": rec("old", "2026-01-02T09:59:00+00:00", "2026-01-02T10:00:00+00:00"),
        "2026-01-02T11:00:00.000001+00:00": rec("new", "2026-01-02T11:00:00+00:00", "2026-01-02T11:00:00+00:00",
                                                killed=True, signal="SIGTERM"),
        "2026-01-02T11:00:00.000001+00:00#2": rec("newer", "2026-01-02T11:00:00+00:00", "2026-01-02T11:00:00+00:00"),
    }
    rows = format.logs_rows(records)
    assert [r[1] for r in rows] == ["newer", "new", "old"]
    assert rows[1][3] == "killed(143)"
    assert rows[2][4] == "1m00s"


# Completion scripts.


def test_completion_lists_every_subcommand_and_option() -> None:
    for shell in ("bash", "zsh"):
        text = script(cli.parser(), shell)
        for word in ("run", "follow", "list", "kill", "logs", "watch", "user", "--kill-on-interrupt", "--since",
                     "--password-file", "--role"):
            assert word in text, (shell, word)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_is_valid_shell(shell: str, tmp_path: Any) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    path = tmp_path / f"completion.{shell}"
    path.write_text(script(cli.parser(), shell))
    result = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bash_completion_completes() -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    program = script(cli.parser(), "bash") + """
COMP_WORDS=(sysadm-dispatch fol); COMP_CWORD=1; _sysadm_dispatch; echo "${COMPREPLY[@]}"
COMP_WORDS=(sysadm-dispatch run --det); COMP_CWORD=2; _sysadm_dispatch; echo "${COMPREPLY[@]}"
COMP_WORDS=(sysadm-dispatch user a); COMP_CWORD=2; _sysadm_dispatch; echo "${COMPREPLY[@]}"
"""
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True)
    assert result.stdout.splitlines() == ["follow", "--detach", "add"], result.stderr


def test_completion_command_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["completion", "bash"]) == 0
    assert "complete -F _sysadm_dispatch sysadm-dispatch" in capsys.readouterr().out


# What the client may import.


def test_roles_agree_with_auth() -> None:
    assert cli.ROLES == auth.ROLES


def test_client_speaks_only_the_wire_protocol() -> None:
    """
    The client package imports nothing of the server but ``auth.users.default_state_dir``,
    and the reactor's type for type checking only.
    """
    for name in os.listdir(CLIENT_DIR):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(CLIENT_DIR, name)) as f:
            tree = ast.parse(f.read())
        typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and ast.unparse(block.test) == "TYPE_CHECKING" for node in ast.walk(block)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                imported = (node.module, [a.name for a in node.names])
                if id(node) in typing_only:
                    assert imported == ("reactors", ["IClientReactor"]), name
                else:
                    assert imported == ("auth.users", ["default_state_dir"]), name
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("sysadm_dispatch"), (name, node.module)


def test_console_script_imports_no_server_module() -> None:
    code = ("import sys; import sysadm_dispatch.cli; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('sysadm_dispatch'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.split())
    assert loaded == {"sysadm_dispatch", "sysadm_dispatch.cli", "sysadm_dispatch.client", "sysadm_dispatch.client.main"}
    assert "twisted" not in result.stdout


def test_zsh_completion_registers(tmp_path: Any) -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")
    path = tmp_path / "_sysadm-dispatch"
    path.write_text(script(cli.parser(), "zsh"))
    program = f"autoload -U compinit; compinit -u -d {tmp_path}/zcompdump; source {path}; print $_comps[sysadm-dispatch]"
    result = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, env={"HOME": str(tmp_path)})
    assert result.stdout.strip() == "_sysadm_dispatch", result.stderr


def test_record_lines_finished_and_still_running() -> None:
    finished = record([0, 2], killed_by="alice", submitted_by="bob")
    finished.update(process_id="j", queue="no_queue")
    finished["process_details"].update(cmd0="hello\n", cmd1="", time_started="2026-01-02T03:04:05+00:00",
                                       time_finished="2026-01-02T03:04:07+00:00")
    lines = format.record_lines(finished)
    assert "outcome       failed (exit code 2)" in lines
    assert "duration      2.0s" in lines
    assert "submitted by  bob" in lines and "killed by     alice" in lines
    assert lines[lines.index("$ cmd0  (exit 0)") + 1] == "hello"
    assert "$ cmd1  (exit 2)" in lines
    running = {"state": "running", "process_id": "r", "process_details": {"cmd_list": ["a", "b"], "a": "x\n"}}
    lines = format.record_lines(running)
    assert "outcome       running" in lines
    assert "$ b  (not run)" in lines


def test_event_lines() -> None:
    args = record([0])
    args.update(process_id="j", queue="q")
    assert format.event_lines(args, "one\ntwo\n", "12:00:00", colour=False) == [
        "12:00:00  j  finished  q  ok exit=0", "    one", "    two"]
    running = {"state": "running", "process_id": "j", "queue": "q", "process_details": {"current_cmd": "sleep 5"}}
    assert format.event_lines(running, "", "12:00:01", colour=True) == [
        "12:00:01  j  \x1b[32mrunning\x1b[0m  q  sleep 5"]


def test_endpoint_url_gets_the_default_port() -> None:
    from twisted.internet.testing import MemoryReactor

    from sysadm_dispatch.client.connection import endpoint_for

    for url, expected in [("ws://example.org", "ws://example.org:12150/"), ("ws://[::1]:99/x", "ws://[::1]:99/x"),
                          ("wss://h:443", "wss://h:443/")]:
        _, full = endpoint_for(MemoryReactor(), config.Target(url, "u", "p", insecure=True))
        assert full == expected


class _ClosedPipe:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: str) -> int:
        self.writes += 1
        raise BrokenPipeError

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise ValueError("no descriptor")


def test_output_to_a_closed_pipe_is_not_an_error() -> None:
    from sysadm_dispatch.client.session import Output

    stdout, stderr = _ClosedPipe(), _ClosedPipe()
    output = Output(stdout, stderr)  # type: ignore[arg-type]
    output.line("one")
    output.line("two")
    assert output.broken and stdout.writes == 1


def test_colour_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from sysadm_dispatch.client.session import wants_colour

    class Tty(_ClosedPipe):
        def isatty(self) -> bool:
            return True

    assert wants_colour(Tty(), {})  # type: ignore[arg-type]
    assert not wants_colour(Tty(), {"NO_COLOR": "1"})  # type: ignore[arg-type]
    assert not wants_colour(Tty(), {"TERM": "dumb"})  # type: ignore[arg-type]
    assert not wants_colour(_ClosedPipe(), {})  # type: ignore[arg-type]
