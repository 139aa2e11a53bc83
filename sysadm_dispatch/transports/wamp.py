"""
The WAMP transport: the server as one host of a fleet, joined to a WAMP
router (Crossbar.io) as a client.

It registers ``sysadm.<host>.rpc``, which takes one request object as over
WebSocket (without ``id``) and returns the reply's ``args`` or raises the
WAMP error ``sysadm.error``, and publishes every dispatcher event's
``args`` on ``sysadm.<host>.events``.  The router authenticated the
caller: its ``authrole`` (disclosed by the router) decides what it may do.
The connection is kept with Autobahn's component API, which reconnects
with backoff; jobs run on meanwhile and a new session registers again.
See docs/fleet.rst.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from autobahn.twisted.component import Component
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions, RegisterOptions
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

from ..api.handlers.auth import NAMES as LOGIN_NAMES
from ..api.router import Router, RPCError, Session, check_message
from ..auth.users import FULL, READ, User, UsersFileError, check_private
from ..core.events import EventBatch, Subscription

log = Logger()

#: The WAMP error every refused request raises, with code, message and detail as kwargs.
ERROR_URI = "sysadm.error"
DEFAULT_REALM = "sysadm"
FULL_ROLE = "operator"
READ_ROLE = "viewer"

_HOST = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REALM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def default_host() -> str:
    """The machine's short host name, made fit for a URI component."""
    name = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:64]
    return name or "localhost"


def check_host(name: str) -> str:
    """``name`` if it may be a host name in the fleet; ``ValueError`` saying why not."""
    if not _HOST.match(name):
        raise ValueError(f"{name!r}: a host name has 1 to 64 letters, digits, '-' or '_' (it becomes part of "
                         "WAMP URIs and the session's authid)")
    return name


def check_realm(name: str) -> str:
    if not _REALM.match(name):
        raise ValueError(f"{name!r}: a realm name has letters, digits, '_', '-' and '.', and starts with neither "
                         "of the last two")
    return name


def check_router_url(url: str) -> str:
    if not re.match(r"^wss?://[^/\s]+(/\S*)?$", url):
        raise ValueError(f"{url!r}: the router's URL must be ws://HOST:PORT/PATH or wss://...")
    return url


def read_secret(path: str) -> str:
    """
    The first line of a ticket or secret file, refused (``UsersFileError``)
    if others could have written the file or it holds nothing.
    """
    check_private(path)
    with open(path, encoding="utf-8") as f:
        secret = f.readline().strip()
    if not secret:
        raise UsersFileError(f"{path} is empty: its first line must hold the secret")
    return secret


def rpc_uri(host: str) -> str:
    return f"sysadm.{host}.rpc"


def events_uri(host: str) -> str:
    return f"sysadm.{host}.events"


class WampHost(Service):
    """
    The server's membership of a fleet: one WAMP component, started and
    stopped with the server.  ``joined`` counts the sessions it had (for
    the metrics and tests); ``session`` is the current one, if any.
    """

    def __init__(
        self,
        router: Router,
        url: str,
        *,
        realm: str = DEFAULT_REALM,
        host: str | None = None,
        ticket: str | None = None,
        cra_secret: str | None = None,
        full_role: str = FULL_ROLE,
        read_role: str = READ_ROLE,
        reactor: IReactorCore,
        max_retry_delay: float = 30.0,
    ) -> None:
        self.router = router
        self.url = url
        self.realm = realm
        self.host = host or default_host()
        self.full_role = full_role
        self.read_role = read_role
        self.reactor = reactor
        self.session: Any = None
        self.joined = 0
        self._events: Subscription | None = None
        self._done: Deferred[Any] | None = None
        #: The component is running (started, and has not given up).
        self._connected = False
        self._publish = PublishOptions(exclude_me=True, acknowledge=False)
        authentication: dict[str, Any] = {}
        if ticket is not None:
            authentication["ticket"] = {"authid": self.host, "ticket": ticket}
        if cra_secret is not None:
            authentication["wampcra"] = {"authid": self.host, "secret": cra_secret}
        transport = {
            "type": "websocket",
            "url": url,
            "max_retries": -1,  # never give up
            "initial_retry_delay": 0.5,
            "max_retry_delay": max_retry_delay,
            "retry_delay_growth": 1.5,
            "retry_delay_jitter": 0.1,
            "options": {"autoPingInterval": 20.0, "autoPingTimeout": 20.0, "openHandshakeTimeout": 10.0},
        }
        self.component = Component(transports=[transport], realm=realm, authentication=authentication or None)
        self.component.on("join", self._joined)
        self.component.on("leave", self._left)

    # The service.

    def startService(self) -> None:
        super().startService()
        self._connected = True
        self._done = self.component.start(self.reactor)
        self._done.addErrback(lambda f: log.failure("the WAMP connection to {url} gave up", f, url=self.url))
        self._done.addBoth(self._component_ended)

    def _component_ended(self, result: object) -> None:
        self._connected = False

    def stopService(self) -> Any:
        super().stopService()
        self._stop_events()
        if not self._connected:
            return None
        d = self.component.stop()
        return d.addErrback(lambda f: None) if isinstance(d, Deferred) else None

    # Sessions.

    @inlineCallbacks
    def _joined(self, session: Any, details: Any) -> Any:
        self.session = session
        self.joined += 1
        try:
            yield session.register(self._call, rpc_uri(self.host), options=RegisterOptions(details_arg="details"))
        except ApplicationError as e:
            log.error("the WAMP router refused to register {uri} for host {host}: {error}",
                      uri=rpc_uri(self.host), host=self.host, error=e.error)
            session.leave()
            return
        self._stop_events()
        self._events = self.router.dispatcher.events.subscribe("dispatcher", self._publish_batch, batched=True)
        log.info("joined the WAMP router {url} as host {host} (realm {realm})",
                 url=self.url, host=self.host, realm=self.realm)

    def _left(self, session: Any, details: Any) -> None:
        if session is self.session:
            self.session = None
            self._stop_events()
        if self.running:
            log.info("left the WAMP router {url}: {reason}; reconnecting", url=self.url,
                     reason=getattr(details, "reason", details))

    def _stop_events(self) -> None:
        if self._events is not None:
            self._events.cancel()
            self._events = None

    def _publish_batch(self, batch: EventBatch) -> None:
        session = self.session
        if session is None or not session.is_attached():
            return
        topic = events_uri(self.host)
        for event in batch.events:
            try:
                session.publish(topic, event.args, options=self._publish)
            except Exception as e:  # the transport went away under us: reconnecting
                log.debug("event not published: {error}", error=e)
                return

    # Calls.

    def session_for(self, details: Any) -> Session:
        """The ``Session`` of one call: its user is the caller, with the role its ``authrole`` gives."""
        authid = getattr(details, "caller_authid", None)
        authrole = getattr(details, "caller_authrole", None)
        if authrole is None:
            raise RPCError(403, "the router did not disclose the caller; its config must disclose callers "
                                "of sysadm.*.rpc (see docs/fleet.rst)")
        if authrole == self.full_role:
            role = FULL
        elif authrole == self.read_role:
            role = READ
        else:
            raise RPCError(403, f"the WAMP role {str(authrole)[:64]!r} may do nothing here (roles: "
                                f"{self.full_role} may run and kill, {self.read_role} may look)")
        name = str(authid) if authid else str(authrole)
        return Session(peer=f"wamp:{name[:128]}", user=User(name[:128], role), transport="wamp")

    def _call(self, request: Any = None, *extra: Any, details: Any = None, **kwargs: Any) -> Deferred[Any]:
        d = Deferred.fromCoroutine(self._handle(request, extra, kwargs, details))
        return d.addErrback(_as_wamp_error)

    async def _handle(self, request: Any, extra: tuple[Any, ...], kwargs: dict[str, Any], details: Any) -> Any:
        if extra or kwargs:
            raise RPCError(400, "sysadm rpc: one positional argument, the request object, and nothing else")
        if not isinstance(request, dict):
            raise RPCError(400, "sysadm rpc: the argument must be a request object with namespace, name and args")
        router = self.router
        check_message(request, True, router.max_depth, router.max_string_chars)
        namespace, name = request.get("namespace"), request.get("name")
        if not isinstance(namespace, str) or not isinstance(name, str):
            missing = "namespace" if not isinstance(namespace, str) else "name"
            raise RPCError(400, f"{missing} must be a string")
        if namespace == "rpc" and name in LOGIN_NAMES:
            raise RPCError(400, f"rpc/{name} is not used over WAMP: the router authenticated the caller, "
                                "whose WAMP role decides what it may do")
        if namespace == "events":
            raise RPCError(400, f"events/{name[:64]} is not used over WAMP: subscribe to the topic "
                                f"{events_uri(self.host)} instead")
        session = self.session_for(details)
        reply = await router.handle_request(session, namespace, name, "", request.get("args"))
        if reply is None:
            return None
        if reply.get("name") == "error":
            args = reply["args"]
            raise RPCError(args["code"], args["detail"])
        return reply.get("args")


def _as_wamp_error(failure: Any) -> Any:
    if failure.check(RPCError):
        e = failure.value
        raise ApplicationError(ERROR_URI, code=e.code, message=e.message, detail=e.detail)
    log.failure("bug while handling a WAMP call", failure)
    raise ApplicationError(ERROR_URI, code=500, message="Internal Server Error",
                           detail="internal error; the server log has the details")
