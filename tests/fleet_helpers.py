"""
A fleet for the tests: a real Crossbar.io router, started with the shipped
configuration (contrib/crossbar) and test principals, and real ``twistd``
servers joined to it as hosts.

Crossbar lives in a virtualenv of its own, never in the project's:
``SYSADM_DISPATCH_CROSSBAR`` names its ``crossbar`` program (default: the
one in ``CROSSBAR_VENV``).  Without it the fleet tests skip, unless
``SYSADM_DISPATCH_FLEET_TESTS=required``, when they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from autobahn.twisted.component import Component
from autobahn.wamp.exception import ApplicationError
from conftest import REPO, deferLater, python_env, with_timeout
from twisted.internet import reactor
from twisted.internet.defer import Deferred

CROSSBAR_VENV = os.path.join(os.path.expanduser("~"), ".cache", "sysadm-dispatch", "crossbar-venv")
SETUP = f"python3 -m venv {CROSSBAR_VENV} && {CROSSBAR_VENV}/bin/pip install crossbar"
CONTRIB = os.path.join(REPO, "contrib", "crossbar")
REALM = "sysadm"


def crossbar_program() -> str:
    """The ``crossbar`` program, or skip (fail when the fleet tests are required) saying how to get it."""
    path = os.environ.get("SYSADM_DISPATCH_CROSSBAR") or os.path.join(CROSSBAR_VENV, "bin", "crossbar")
    if os.access(path, os.X_OK):
        return path
    reason = (f"no Crossbar.io router at {path}: set it up with `{SETUP}` "
              "(or point SYSADM_DISPATCH_CROSSBAR at a crossbar program)")
    if os.environ.get("SYSADM_DISPATCH_FLEET_TESTS") == "required":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], log: str, seconds: float = 60) -> None:
    """Until ``port`` accepts connections (a bounded poll, before the test's reactor runs)."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            with open(log, errors="replace") as f:
                raise AssertionError(f"the process exited early ({process.returncode}):\n{f.read()[-4000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on port {port} after {seconds} s")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a process started in a session of its own, and everything it started."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _private(path: str, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


#: The test principals: two hosts (one by ticket, one by WAMP-CRA), a rogue
#: host, an operator and a viewer.
PRINCIPALS = {
    "h1": {"role": "agent", "ticket": "ticket-h1"},
    "h2": {"role": "agent", "secret": "secret-h2"},
    "rogue": {"role": "agent", "ticket": "ticket-rogue"},
    "op": {"role": "operator", "ticket": "ticket-op"},
    "vw": {"role": "viewer", "ticket": "ticket-vw"},
}


class Router:
    """``crossbar start`` in a node directory made from contrib/crossbar."""

    def __init__(self, program: str, cbdir: str) -> None:
        self.program = program
        self.cbdir = cbdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        os.makedirs(cbdir, mode=0o700)
        with open(os.path.join(CONTRIB, "config.json")) as f:
            config = json.load(f)
        for transport in config["workers"][0]["transports"]:
            transport["endpoint"]["port"] = self.port
        with open(os.path.join(cbdir, "config.json"), "w") as f:
            json.dump(config, f)
        shutil.copy(os.path.join(CONTRIB, "sysadm_router.py"), cbdir)
        _private(os.path.join(cbdir, "principals.json"), json.dumps(PRINCIPALS))
        self.log = os.path.join(cbdir, "..", "crossbar.log")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> None:
        out = open(self.log, "ab")
        self.process = subprocess.Popen([self.program, "start", "--cbdir", self.cbdir], stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        _wait_port(self.port, self.process, self.log)

    def stop(self) -> None:
        _stop(self.process)


class Host:
    """``twistd -n sysadm-dispatch --wamp ...`` as one host of the fleet."""

    def __init__(self, name: str, directory: str, router: Router, *args: str) -> None:
        self.name = name
        self.directory = directory
        os.makedirs(directory, mode=0o700)
        self.state_dir = os.path.join(directory, "state")
        self.ws_port = free_port()
        self.log = os.path.join(directory, "twistd.log")
        principal = PRINCIPALS[name]
        if "ticket" in principal:
            secret = ["--wamp-ticket-file", _private(os.path.join(directory, "ticket"), principal["ticket"] + "\n")]
        else:
            secret = ["--wamp-cra-secret-file", _private(os.path.join(directory, "secret"),
                                                         principal["secret"] + "\n")]
        self.argv = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; "
                     "sys.argv[0] = 'twistd'; run()", "-n", "--pidfile=", "--logfile", self.log,
                     "sysadm-dispatch", "--state-dir", self.state_dir,
                     "--ws", f"tcp:{self.ws_port}:interface=127.0.0.1", "--rest", f"tcp:{free_port()}:interface=127.0.0.1",
                     "--wamp", router.url, "--wamp-host", name, *secret, *args]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=python_env(), cwd=self.directory, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.ws_port, self.process, self.log)

    @property
    def admin_password(self) -> str:
        with open(os.path.join(self.state_dir, "admin-password")) as f:
            return f.read().strip()

    def stop(self) -> None:
        _stop(self.process)


class Joined:
    """A test's own WAMP session through the router."""

    def __init__(self, component: Component, session: Any, done: Deferred[Any]) -> None:
        self.component = component
        self.session = session
        #: Fires when the component has ended (it does not reconnect).
        self.done = done

    async def close(self) -> None:
        if self.session.is_attached():
            self.session.leave()
        await with_timeout(self.done.addErrback(lambda f: None))


async def join(router: Router, authid: str, component: Any = None) -> Joined:
    """Join the router as ``authid`` (a test principal), once: failing if that is refused."""
    principal = PRINCIPALS[authid]
    auth = ({"ticket": {"authid": authid, "ticket": principal["ticket"]}} if "ticket" in principal
            else {"wampcra": {"authid": authid, "secret": principal["secret"]}})
    comp = Component(transports=[{"url": router.url, "max_retries": 0}], realm=REALM, authentication=auth)
    joined: Deferred[Any] = Deferred()
    comp.on("join", lambda session, details: joined.callback(session) if not joined.called else None)

    def failed(*args: Any) -> None:
        if not joined.called:
            joined.errback(AssertionError(f"{authid} could not join the router: {args!r}"))

    comp.on("connectfailure", failed)
    comp.on("leave", failed)
    done = comp.start(reactor)
    done.addErrback(lambda f: failed(f.getErrorMessage()))
    session = await with_timeout(joined)
    return Joined(comp, session, done)


async def call(joined: Joined, host: str, namespace: str, name: str, args: Any = None) -> Any:
    return await with_timeout(joined.session.call(f"sysadm.{host}.rpc",
                                                  {"namespace": namespace, "name": name, "args": args}))


async def wait_registered(joined: Joined, host: str, seconds: float = 60) -> None:
    """Until ``host`` answers through the router (it joins, or joins again, with backoff)."""
    deadline = reactor.seconds() + seconds
    while True:
        try:
            await call(joined, host, "rpc", "identify")
            return
        except ApplicationError as e:
            if e.error != "wamp.error.no_such_procedure":
                raise
        if reactor.seconds() > deadline:
            raise AssertionError(f"host {host} did not register within {seconds} s")
        await deferLater(0.1)
