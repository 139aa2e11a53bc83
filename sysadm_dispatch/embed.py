"""
Building the transports for a program that embeds the dispatcher.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource

from .api.router import Router
from .auth.checker import UsersFileChecker
from .auth.login import Authenticator
from .core.dispatcher import Dispatcher
from .transports.rest import RestAPI
from .transports.websocket import DispatchServerFactory
from .transports.websocket import make_websocket_factory as _websocket_factory


def make_router(
    dispatcher: Dispatcher, users_file: str, *, token_ttl: float = 900.0, max_message_bytes: int = 1 << 20
) -> Router:
    """
    The request router for ``dispatcher``, authenticating against
    ``users_file`` (see ``sysadm-dispatch user add``).  Make one and give it
    to both transports so they share tokens.
    """
    reactor: Any = dispatcher.reactor
    checker = UsersFileChecker(reactor, users_file)
    checker.load()
    auth = Authenticator(reactor, checker, token_ttl=token_ttl)
    return Router(dispatcher, auth, max_message_bytes=max_message_bytes)


def make_rest_resource(router: Router) -> IResource:
    """The REST API (``PUT /rpc/dispatcher`` ...) as a resource to serve or mount."""
    return RestAPI(router).resource()


def make_websocket_factory(router: Router, *, max_backlog_bytes: int = 4 << 20) -> DispatchServerFactory:
    """
    The WebSocket server factory, to listen with on any stream endpoint.  A
    client that lets more than ``max_backlog_bytes`` wait for it is
    disconnected.
    """
    return _websocket_factory(router, max_backlog_bytes=max_backlog_bytes)
