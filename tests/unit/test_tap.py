"""
Unit tests for ``sysadm_dispatch.tap.Options``: ``twistd sysadm-dispatch``
arguments parsed from lists, as twistd parses them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from sysadm_dispatch import tap
from sysadm_dispatch.auth.users import FULL, read_users

DEFAULT_QUEUES = {"no_queue": 0, "pkg_queue": 1, "iocage_queue": 1}


@pytest.fixture(autouse=True)
def state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> str:
    """Keep every test off the real home directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    return str(tmp_path / "xdg")


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def usage_error(*argv: str) -> str:
    with pytest.raises(usage.UsageError) as info:
        parse(*argv)
    return str(info.value)


def test_defaults(state_home: str) -> None:
    options = parse()
    assert options["ws"] == "tcp:12150:interface=127.0.0.1"
    assert options["rest"] == "tcp:12151:interface=127.0.0.1"
    assert options["kill-grace"] == 5 and isinstance(options["kill-grace"], float)
    assert options["token-ttl"] == 900 and isinstance(options["token-ttl"], float)
    assert options["max-message-bytes"] == 1048576 and type(options["max-message-bytes"]) is int
    assert options["log-cap-bytes"] == 1048576 and type(options["log-cap-bytes"]) is int
    assert options["state-dir"] == os.path.join(state_home, "sysadm-dispatch")
    assert options["users"] == os.path.join(state_home, "sysadm-dispatch", "users")
    assert options["queues"] == DEFAULT_QUEUES


def test_state_dir_without_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    options = parse()
    expected = str(tmp_path / "home" / ".local" / "state" / "sysadm-dispatch")
    assert options["state-dir"] == expected
    assert options["users"] == os.path.join(expected, "users")


def test_state_dir_as_a_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert parse()["state-dir"] == "/var/lib/sysadm-dispatch"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    options = parse()
    assert options["state-dir"] == str(tmp_path / "systemd")
    assert options["users"] == str(tmp_path / "systemd" / "users")


def test_state_dir_given(tmp_path: Any) -> None:
    options = parse("--state-dir", str(tmp_path / "s"))
    assert options["state-dir"] == str(tmp_path / "s")
    assert options["users"] == str(tmp_path / "s" / "users")


def test_users_given(tmp_path: Any) -> None:
    options = parse("--state-dir", str(tmp_path / "s"), "--users", str(tmp_path / "elsewhere"))
    assert options["state-dir"] == str(tmp_path / "s")
    assert options["users"] == str(tmp_path / "elsewhere")


def test_endpoints_given() -> None:
    options = parse("--ws", "tcp:0:interface=::1", "--rest=ssl:8443:privateKey=k.pem")
    assert options["ws"] == "tcp:0:interface=::1"
    assert options["rest"] == "ssl:8443:privateKey=k.pem"


@pytest.mark.parametrize("option", ["--ws", "--rest"])
def test_empty_endpoint(option: str) -> None:
    assert option in usage_error(option, "")


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--kill-grace", "2.5", 2.5),
        ("--kill-grace", "0", 0.0),
        ("--kill-grace", "3600", 3600.0),
        ("--kill-grace", "7", 7.0),
        ("--token-ttl", "1", 1.0),
        ("--token-ttl", "60.5", 60.5),
        ("--token-ttl", str(30 * 86400), 30 * 86400.0),
        ("--max-message-bytes", "256", 256),
        ("--max-message-bytes", "4096", 4096),
        ("--max-message-bytes", str(1 << 30), 1 << 30),
        ("--log-cap-bytes", "64", 64),
        ("--log-cap-bytes", "65536", 65536),
    ],
)
def test_numbers_are_coerced(option: str, value: str, expected: float) -> None:
    got = parse(option, value)[option[2:]]
    assert got == expected
    assert type(got) is type(expected), f"{option} {value} gave {got!r} ({type(got).__name__})"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        # not numbers
        ("--kill-grace", "x"),
        ("--kill-grace", ""),
        ("--kill-grace", "5s"),
        ("--token-ttl", "forever"),
        ("--max-message-bytes", "1.5"),
        ("--max-message-bytes", "1MiB"),
        ("--max-message-bytes", "1e6"),
        ("--log-cap-bytes", "lots"),
        ("--log-cap-bytes", "64.0"),
        # out of range
        ("--kill-grace", "-1"),
        ("--kill-grace", "3601"),
        ("--kill-grace", "nan"),
        ("--kill-grace", "inf"),
        ("--token-ttl", "0"),
        ("--token-ttl", "0.5"),
        ("--token-ttl", "-900"),
        ("--token-ttl", str(30 * 86400 + 1)),
        ("--token-ttl", "nan"),
        ("--max-message-bytes", "255"),
        ("--max-message-bytes", "0"),
        ("--max-message-bytes", "-1"),
        ("--max-message-bytes", str((1 << 30) + 1)),
        ("--log-cap-bytes", "63"),
        ("--log-cap-bytes", "-64"),
        ("--log-cap-bytes", str((1 << 30) + 1)),
    ],
)
def test_bad_numbers_are_refused(option: str, value: str) -> None:
    message = usage_error(option, value)
    assert repr(value) in message, message


def numeric_options() -> list[tuple[str, Any]]:
    return [(p[0], p[2]) for p in tap.Options.optParameters if not isinstance(p[2], str) and p[2] is not None]


def test_every_numeric_option_is_coerced_and_checked() -> None:
    options = numeric_options()
    assert {"kill-grace", "token-ttl", "max-message-bytes", "log-cap-bytes"} <= {name for name, _ in options}
    for name, default in options:
        # The default, given on the command line, comes back as the same type and value.
        got = parse(f"--{name}", str(default))[name]
        assert (got, type(got)) == (default, type(default)), name
        for bad in ["x", "nan", "-1e30", "1e30"]:
            message = usage_error(f"--{name}", bad)
            assert repr(bad) in message, (name, message)


def test_out_of_range_message_gives_the_bounds() -> None:
    message = usage_error("--kill-grace", "4000")
    assert "out of range" in message and "3600" in message


def test_queue_adds_and_overrides() -> None:
    options = parse("--queue", "backup_queue:2", "--queue", "pkg_queue:3", "--queue=no-limit:0")
    assert options["queues"] == {"no_queue": 0, "pkg_queue": 3, "iocage_queue": 1, "backup_queue": 2,
                                 "no-limit": 0}
    assert all(type(n) is int for n in options["queues"].values())


def test_queue_repeated_last_wins() -> None:
    assert parse("--queue", "q:1", "--queue", "q:5")["queues"]["q"] == 5


def test_queue_options_are_not_shared_between_instances() -> None:
    parse("--queue", "only_here:1")
    assert parse()["queues"] == DEFAULT_QUEUES


@pytest.mark.parametrize(
    "value",
    ["q", "q:", ":1", "q:x", "q:-1", "q:1.5", "a:b:1", "bad name:1", "q/x:1", "q:1:", "", ":"],
)
def test_bad_queue_is_refused(value: str) -> None:
    message = usage_error("--queue", value)
    assert repr(value) in message, message


def test_unknown_option_is_refused() -> None:
    with pytest.raises(usage.UsageError):
        parse("--frobnicate")


def test_make_service_uses_the_parsed_values(tmp_path: Any) -> None:
    # No socket is opened: the reactor is a memory reactor and the service is not started.
    options = parse(
        "--state-dir", str(tmp_path / "state"),
        "--ws", "tcp:0:interface=127.0.0.1", "--rest", "tcp:0:interface=127.0.0.1",
        "--kill-grace", "2", "--token-ttl", "60", "--max-message-bytes", "4096", "--log-cap-bytes", "128",
        "--queue", "backup_queue:2",
    )
    service = tap.makeService(options, reactor=MemoryReactorClock())
    dispatcher, router = service.dispatcher, service.router
    assert dispatcher.kill_grace == 2.0 and dispatcher.log_cap_bytes == 128
    assert {name: q.limit for name, q in dispatcher.queues.items()} == {**DEFAULT_QUEUES, "backup_queue": 2}
    assert router.max_message_bytes == 4096
    assert router.auth.token_ttl == 60.0
    assert {s.name for s in service} >= {"ws", "rest", "dispatcher"}
    users = read_users(options["users"])
    assert users["admin"].role == FULL
    assert oct(os.stat(tmp_path / "state").st_mode & 0o777) == oct(0o700)


def test_spawner_defaults_per_platform_and_is_checked() -> None:
    from sysadm_dispatch.process.backends import DEFAULT_SPAWNER

    assert parse()["spawner"] == DEFAULT_SPAWNER == ("fast" if sys.platform.startswith("linux") else "twisted")
    assert parse("--spawner", "twisted")["spawner"] == "twisted"
    assert "--spawner 'posix': choose one of fast, twisted" in usage_error("--spawner", "posix")
    assert "--spawner" in tap.Options().__str__()


@pytest.mark.parametrize("spawner", ["fast", "twisted"])
def test_make_service_hands_one_tracker_to_the_dispatcher_and_the_subreaper(tmp_path: Any, spawner: str) -> None:
    options = parse("--state-dir", str(tmp_path / "state"), "--ws", "tcp:0:interface=127.0.0.1",
                    "--rest", "tcp:0:interface=127.0.0.1", "--spawner", spawner)
    reactor = MemoryReactorClock()
    service = tap.makeService(options, reactor=reactor)
    tracker = service.dispatcher.processes
    assert tracker.spawner == spawner and tracker.reactor is reactor
    subreaper = service.getServiceNamed("subreaper")
    assert subreaper.tracker is tracker
    assert [child.step for child in subreaper] == [2.0]  # its reaping loop: a TimerService child
