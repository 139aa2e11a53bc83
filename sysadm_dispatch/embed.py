"""
The transports for a program that embeds its own ``Dispatcher``, built from
the same pieces as ``server.make_server`` (which builds the whole server,
and is the simpler way to embed it).

What ``make_server`` adds that these leave to the program: the WebSocket
connection limits and timers (``DispatchServerFactory.guard_connections``),
the REST listener's limits, the users file's watch for changes, and
cancelling the failed-login guard's timers at shutdown.
"""

from __future__ import annotations

from twisted.web.resource import IResource

from .api.router import Router
from .auth.checker import UsersFileChecker
from .config import ServerConfig
from .core.dispatcher import Dispatcher
from .server import login_guard, make_authenticator, rest_api, websocket_factory
from .server import make_router as _make_router
from .transports.websocket import DispatchServerFactory


def make_router(
    dispatcher: Dispatcher, users_file: str, *, token_ttl: float = 900.0, max_message_bytes: int = 1 << 20
) -> Router:
    """
    The request router for ``dispatcher``, authenticating against
    ``users_file`` (see ``sysadm-dispatch user add``).  Make one and give it
    to both transports so they share tokens.
    """
    reactor = dispatcher.reactor
    config = ServerConfig(state_dir="", users=users_file, token_ttl=token_ttl, max_message_bytes=max_message_bytes)
    checker = UsersFileChecker(reactor, users_file)
    checker.load()
    return _make_router(dispatcher, make_authenticator(reactor, checker, login_guard(reactor, config), config), config)


def make_rest_resource(router: Router) -> IResource:
    """The REST API (``PUT /rpc/dispatcher`` ...) as a resource to serve or mount."""
    return rest_api(router, ServerConfig(state_dir="")).resource()


def make_websocket_factory(router: Router, *, max_backlog_bytes: int = 4 << 20) -> DispatchServerFactory:
    """
    The WebSocket server factory, to listen with on any stream endpoint.  A
    client that lets more than ``max_backlog_bytes`` wait for it is
    disconnected.
    """
    return websocket_factory(router, ServerConfig(state_dir="", event_backlog_bytes=max_backlog_bytes))
