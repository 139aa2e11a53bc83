"""
Unit tests for the composition root: ``make_server`` built on a memory
reactor (no socket is opened, nothing is started), and ``tap.server_config``
from parsed options.
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from sysadm_dispatch import ServerConfig, make_server, tap
from sysadm_dispatch.core.dispatcher import Dispatcher
from sysadm_dispatch.listeners import ListenerService
from sysadm_dispatch.ops.sdnotify import NotifyService
from sysadm_dispatch.server import LoginGuardService, PasswordCheckerService, Server
from sysadm_dispatch.store.retention import HistoryPruner

LOCAL = "tcp:0:interface=127.0.0.1"


@pytest.fixture(autouse=True)
def state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> str:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    return str(tmp_path / "xdg")


def build(tmp_path: Any, **settings: Any) -> Server:
    return make_server(MemoryReactorClock(), state_dir=str(tmp_path / "state"), **{"ws": LOCAL, "rest": LOCAL,
                                                                                   **settings})


def test_keywords_build_the_server(tmp_path: Any) -> None:
    server = build(tmp_path, queues={"backup_queue": 2}, kill_grace=2.0, token_ttl=60.0, max_message_bytes=4096,
                   max_failed_logins=3)
    assert {name: q.limit for name, q in server.dispatcher.queues.items()} == {
        "no_queue": 0, "pkg_queue": 1, "iocage_queue": 1, "backup_queue": 2}
    assert server.dispatcher.kill_grace == 2.0
    assert server.router.dispatcher is server.dispatcher
    assert server.router.max_message_bytes == 4096
    assert server.auth is server.router.auth and server.auth.token_ttl == 60.0
    assert server.auth.guard.max_failures == 3
    assert server.store is server.dispatcher.store and server.store is not None
    assert server.websocket.router is server.router
    assert server.metrics is None and server.wamp is None
    assert (tmp_path / "state" / "users").exists() and (tmp_path / "state" / "admin-password").exists()


def test_a_config_and_keywords_together(tmp_path: Any) -> None:
    config = ServerConfig(state_dir=str(tmp_path / "state"), ws=LOCAL, rest=LOCAL, kill_grace=3.0)
    server = make_server(MemoryReactorClock(), config, job_timeout=7.0)
    assert (server.dispatcher.kill_grace, server.dispatcher.runs.job_timeout) == (3.0, 7.0)
    with pytest.raises(TypeError):
        make_server(MemoryReactorClock(), config, no_such_setting=1)


def test_children_stop_listeners_first_then_the_dispatcher(tmp_path: Any) -> None:
    server = build(tmp_path, metrics=LOCAL)
    children = list(server)
    position = {id(child): i for i, child in enumerate(children)}
    dispatcher = server.dispatcher
    assert isinstance(dispatcher, Dispatcher) and children[0] is dispatcher
    listeners = [child for child in children if isinstance(child, ListenerService)]
    assert [listener.name for listener in listeners] == ["ws", "rest", "metrics"]
    # A MultiService stops its children in reverse: listeners, then the pruner, then the dispatcher.
    pruner = next(child for child in children if isinstance(child, HistoryPruner))
    assert position[id(dispatcher)] < position[id(pruner)] < min(position[id(child)] for child in listeners)
    assert any(isinstance(child, PasswordCheckerService) for child in children)
    assert any(isinstance(child, LoginGuardService) for child in children)
    assert server.listener("rest") is server.getServiceNamed("rest")
    assert server.listener("ws").factory is server.websocket
    assert server.listener("rest").factory is server.rest
    assert server.metrics is not None and server.metrics.websocket is server.websocket


def test_a_listener_left_out(tmp_path: Any) -> None:
    server = build(tmp_path, ws=None)
    with pytest.raises(KeyError):
        server.listener("ws")
    # The WebSocket is still served at /ws of the REST listener, with the dashboard.
    assert server.rest.resource.__class__.__name__ == "DashboardRoot"
    assert build(tmp_path, dashboard=False).rest.resource.__class__.__name__ != "DashboardRoot"


def test_ready_notification_only_when_asked_for(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    assert not any(isinstance(child, NotifyService) for child in build(tmp_path, notify=False))
    assert "NOTIFY_SOCKET" in os.environ
    assert any(isinstance(child, NotifyService) for child in build(tmp_path))
    assert "NOTIFY_SOCKET" not in os.environ


def test_tls_makes_tcp_listeners_ssl(tmp_path: Any) -> None:
    # No certificate is read before the endpoint is built: a missing one stops the server in one line.
    with pytest.raises(SystemExit) as info:
        build(tmp_path, tls_cert=str(tmp_path / "missing.pem"))
    assert "--ws 'ssl:0:interface=127.0.0.1:privateKey=" in str(info.value)


def test_wamp_without_a_secret_is_refused(tmp_path: Any) -> None:
    with pytest.raises(SystemExit) as info:
        build(tmp_path, wamp="ws://127.0.0.1:1/ws", wamp_host="h")
    assert "--wamp-ticket-file" in str(info.value)


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_every_option_reaches_the_config() -> None:
    names = {p[0] for p in tap.Options.optParameters} | {f[0] for f in tap.Options.optFlags}
    names |= {name[4:].replace("_", "-") for name in dir(tap.Options) if name.startswith("opt_")} - {"help", "version"}
    config_names = {f.name.replace("_", "-") for f in fields(ServerConfig)}
    # The options that are not a field of the same name, and the field each becomes.
    renamed = {"queue": "queues", "no-dashboard": "dashboard", "log-format": "server-log"}
    assert names - config_names == set(renamed)
    assert set(renamed.values()) <= config_names


def test_option_defaults_are_the_config_defaults() -> None:
    defaults = ServerConfig(state_dir="")
    for name, _, default, *_ in tap.Options.optParameters:
        field = name.replace("-", "_")
        if hasattr(defaults, field) and field != "state_dir":  # (required: no default)
            assert getattr(defaults, field) == default, name
            assert type(getattr(defaults, field)) is type(default), name


def test_server_config_from_options(tmp_path: Any) -> None:
    options = parse("--state-dir", str(tmp_path / "s"), "--kill-grace", "2", "--queue", "backup_queue:3",
                    "--no-dashboard", "--trust-proxy", "--access-log", "--max-chain", "9", "--ws", LOCAL)
    config = tap.server_config(options)
    assert config.state_dir == str(tmp_path / "s") and config.users_file == str(tmp_path / "s" / "users")
    assert config.kill_grace == 2.0 and config.max_chain == 9 and config.ws == LOCAL
    assert config.queues["backup_queue"] == 3
    assert (config.dashboard, config.trust_proxy, config.access_log) == (False, True, True)
    assert config.server_log is None  # not under twistd: the host's log
    defaults = tap.server_config(parse("--state-dir", str(tmp_path / "s")))
    assert (defaults.dashboard, defaults.trust_proxy, defaults.access_log) == (True, False, False)


def test_make_service_builds_the_server_of_the_options(tmp_path: Any) -> None:
    options = parse("--state-dir", str(tmp_path / "s"), "--ws", LOCAL, "--rest", LOCAL, "--max-pending", "7")
    service = tap.makeService(options, MemoryReactorClock())
    assert isinstance(service, Server)
    assert service.dispatcher.max_pending == 7


def test_every_periodic_task_is_a_timer_service_in_the_tree(tmp_path: Any) -> None:
    """The users file's watch, the history pruner and the subreaper's reaping: children, started and stopped with it."""
    from twisted.application.internet import TimerService
    from twisted.application.service import IServiceCollection

    from sysadm_dispatch.auth.checker import UsersFileWatch

    server = build(tmp_path)

    def timers(service: Any) -> list[Any]:
        found = [service] if isinstance(service, TimerService) else []
        if IServiceCollection.providedBy(service):
            for child in service:
                found += timers(child)
        return found

    found = timers(server)
    kinds = {type(t) for t in found}
    assert UsersFileWatch in kinds and HistoryPruner in kinds, kinds
    assert any(type(t) is TimerService for t in found), "the subreaper's reaping"
    watch = next(t for t in found if isinstance(t, UsersFileWatch))
    assert isinstance(watch.parent, PasswordCheckerService)
    checker = watch.parent
    checker.startService()
    assert watch.running
    checker.stopService()
    assert not watch.running
