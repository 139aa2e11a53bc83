"""
The REST transport: ``PUT /<namespace>/<name>`` with a JSON body, answered
with the router's reply as ``{"args": ...}`` and the reply's code as the
HTTP status.  Credentials come with every request, as HTTP Basic auth or a
Bearer token from ``rpc/auth``.
"""

from __future__ import annotations

import json
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site
from werkzeug.exceptions import NotFound

from ..api.router import Router, RPCError, Session, error_reply
from ..auth.blocking import AddressBlocked
from ..auth.login import LoginBusy
from ..auth.users import LoginFailed, User
from ..ops.health import HealthCheck
from .rest_screen import HeaderScreen, basic_credentials, request_address
from .rest_site import BoundedRequest, GuardedSite, body, header_of, no_access_log

log = Logger()

ALLOWED = b"PUT, POST"


class RestAPI:
    """
    A Klein app bound to one router; ``resource()`` is what to serve (or
    ``site()``, which also bounds request bodies while they arrive).  With
    ``trust_proxy``, the client's address is taken from ``X-Forwarded-For``.
    """

    app = Klein()

    def __init__(self, router: Router, *, max_message_bytes: int | None = None, trust_proxy: bool = False,
                 max_unauthenticated_bytes: int = 64 << 10) -> None:
        self.router = router
        self.max_message_bytes = router.max_message_bytes if max_message_bytes is None else max_message_bytes
        self.trust_proxy = trust_proxy
        #: Largest body kept (on a site) before the request's credentials are known good.
        self.max_unauthenticated_bytes = min(max_unauthenticated_bytes, self.max_message_bytes)
        self.health = HealthCheck(router.dispatcher)
        self.screen = HeaderScreen(router, max_message_bytes=self.max_message_bytes, trust_proxy=trust_proxy,
                                   max_unauthenticated_bytes=self.max_unauthenticated_bytes)

    def resource(self) -> IResource:
        return self.app.resource()

    def site(
        self,
        *,
        timeout: float | None = None,
        access_log: bool = False,
        max_connections_per_address: int = 0,
        max_connections: int = 0,
        request_timeout: float = 0,
    ) -> Site:
        """
        The resource in a ``Site`` that drops connections idle for ``timeout``
        seconds, and logs a line per request only with ``access_log`` (the
        dispatcher logs logins and jobs itself; a line per request costs a
        third of a cheap request's time).  The site answers a request that
        cannot be served from its headers alone (see ``screen``), refuses
        connections beyond ``max_connections_per_address`` from one address
        or ``max_connections`` in all (0: no limit), and closes one that has
        not sent a complete request within ``request_timeout`` seconds (0:
        no limit).
        """
        request_class = type("BoundedRequest", (BoundedRequest,), {"max_body": self.max_message_bytes})
        site = GuardedSite(self.resource(), self.screen.check, trust_proxy=self.trust_proxy,
                           requestFactory=request_class, timeout=timeout,
                           max_per_address=max_connections_per_address, max_total=max_connections,
                           request_timeout=request_timeout)
        site.displayTracebacks = False
        if not access_log:
            site.log = no_access_log  # type: ignore[method-assign]
        return site

    def _answer(self, request: Any, envelope: dict[str, Any] | None) -> bytes:
        if envelope is None:
            request.setResponseCode(204)
            return b""
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if envelope["name"] == "error":
            code = envelope["args"]["code"]
            request.setResponseCode(code)
            if code == 401:
                request.setHeader(b"WWW-Authenticate", b'Basic realm="sysadm-dispatch"')
            if code == 405:
                request.setHeader(b"Allow", ALLOWED)
        return body(envelope)

    def _error(self, request: Any, code: int, detail: str, namespace: str = "rpc") -> bytes:
        return self._answer(request, error_reply(namespace, "", RPCError(code, detail)))

    @app.route("/<string:namespace>/<string:name>", methods=None)
    def rpc(self, request: Any, namespace: str, name: str) -> Any:
        session = Session(peer=request_address(request, self.trust_proxy), transport="rest")
        try:
            # Before anything else, and so before any credentials are looked at.
            self.router.check_address(session)
        except RPCError as e:
            if (namespace, name) == ("rpc", "auth") or header_of(request, b"authorization")[:6].lower() == "basic ":
                self.router.auth.count_login("rest", "blocked")
            return self._answer(request, error_reply(namespace if namespace == "events" else "rpc", "", e))
        if request.method not in (b"PUT", b"POST"):
            return self._error(request, 405, f"use PUT (or POST) /{namespace}/{name}, not {request.method.decode()}")
        content = request.content
        content.seek(0, 2)
        size = max(content.tell(), getattr(request, "body_size", 0))
        limit = min(getattr(request, "max_body", self.max_message_bytes), self.max_message_bytes)
        if size > limit:
            without = " without valid credentials" if limit < self.max_message_bytes else ""
            return self._error(request, 413, f"the body is {size} bytes, more than the limit of {limit}{without}")
        content.seek(0)
        data = content.read()
        args: Any = {}
        request_id = ""
        if data.strip():
            try:
                body = self.router.decode(data)
            except RPCError as e:
                return self._answer(request, error_reply("rpc", "", e))
            if isinstance(body, dict) and "args" in body and "action" not in body:
                # A whole envelope; namespace and name come from the path.
                args = body["args"]
                if isinstance(body.get("id"), str):
                    request_id = body["id"]
            else:
                args = body
        refusal_namespace = namespace if namespace == "events" else "rpc"

        def refused(f: Failure) -> bytes:
            f.trap(RPCError)
            return self._answer(request, error_reply(refusal_namespace, "", cast(RPCError, f.value)))

        def respond(_: object = None) -> Any:
            d = self.router.handle_request(session, namespace, name, request_id, args)
            return d.addCallback(lambda envelope: self._answer(request, envelope))

        if not self.router.is_public(namespace, name):
            try:
                checked = self._authenticate(request, session)
            except RPCError as e:
                return self._answer(request, error_reply(refusal_namespace, "", e))
            return checked.addCallbacks(respond, refused)
        if (namespace, name) == ("rpc", "auth_clear"):
            self._bearer(request, session)
        return respond()

    def _bearer(self, request: Any, session: Session) -> None:
        header = header_of(request, b"authorization")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            session.token = value.strip()

    def _authenticate(self, request: Any, session: Session) -> Deferred[None]:
        """
        Check the request's credentials: a Deferred that fires when they are
        good (at once for a token: the router checks it), or fails with
        ``RPCError``; raises it for credentials that cannot be good.
        """
        header = header_of(request, b"authorization")
        if not header:
            raise RPCError(401, "credentials missing: send Authorization: Basic or Bearer")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            session.token = value
            return succeed(None)
        username, password = basic_credentials(header)

        def ok(user: User) -> None:
            session.user = user

        def failed(f: Failure) -> None:
            if f.check(AddressBlocked):
                raise RPCError(403, str(f.value))
            if f.check(LoginBusy):
                raise RPCError(503, str(f.value))
            f.trap(LoginFailed)
            log.info("failed login for {username!r} from {peer}", username=username[:64], peer=session.peer)
            raise RPCError(401, "bad username or password")

        # The check started from the headers, if any: not a second one.
        started = getattr(request, "basic_login", None)
        login = started if started is not None else self.router.auth.login_cached(
            username, password, session.peer, transport="rest")
        return login.addCallbacks(ok, failed)

    @app.route("/health", methods=None)
    def health_check(self, request: Any) -> Any:
        """No login: 200 when the server can take work, else 503 and why (see health.py)."""
        if request.method not in (b"GET", b"HEAD"):
            body = self._error(request, 405, f"use GET /health, not {request.method.decode()}")
            request.setHeader(b"Allow", b"GET, HEAD")
            return body

        def answer(result: tuple[int, dict[str, Any]]) -> bytes:
            code, body = result
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-store")
            return json.dumps(body, separators=(",", ":")).encode()

        return self.health.check().addCallback(answer)

    @app.handle_errors(NotFound)
    def not_found(self, request: Any, failure: Any) -> bytes:
        return self._error(request, 404, f"no such resource {request.path.decode('utf-8', 'replace')[:200]!r}; "
                           "requests go to /<namespace>/<name>")

    @app.handle_errors(Exception)
    def bug(self, request: Any, failure: Any) -> bytes:
        log.failure("bug while handling {path}", failure, path=request.path)
        return self._error(request, 500, "internal error; the server log has the details")


