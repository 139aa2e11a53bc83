"""
The REST transport: ``PUT /<namespace>/<name>`` with a JSON body, answered
with the router's reply as ``{"args": ...}`` and the reply's code as the
HTTP status.  Credentials come with every request, as HTTP Basic auth or a
Bearer token from ``rpc/auth``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from werkzeug.exceptions import NotFound

from .auth import LoginFailed, User
from .guard import AddressBlocked, client_address, peer_host
from .health import HealthCheck
from .rpc import PUBLIC, Router, RPCError, Session, error_reply, settled

log = Logger()

ALLOWED = b"PUT, POST"


def _body(result: dict[str, Any] | None) -> bytes:
    if result is None:
        return b""
    return json.dumps({"args": result["args"]}, separators=(",", ":"), ensure_ascii=False).encode()


def _header(request: Any, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value else ""


class _BoundedRequest(Request):
    """
    A request that keeps at most ``max_body`` bytes of its body and counts
    the rest, so an oversized body costs neither memory nor disk before
    it is answered 413.
    """

    max_body = 1 << 20
    body_size = 0

    def handleContentChunk(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.body_size <= self.max_body:
            super().handleContentChunk(data)


def _no_access_log(request: Any) -> None:
    pass


class RestAPI:
    """
    A Klein app bound to one router; ``resource()`` is what to serve (or
    ``site()``, which also bounds request bodies while they arrive).  With
    ``trust_proxy``, the client's address is taken from ``X-Forwarded-For``.
    """

    app = Klein()

    def __init__(self, router: Router, *, max_message_bytes: int | None = None, trust_proxy: bool = False) -> None:
        self.router = router
        self.max_message_bytes = router.max_message_bytes if max_message_bytes is None else max_message_bytes
        self.trust_proxy = trust_proxy
        self.health = HealthCheck(router.dispatcher)

    def resource(self) -> IResource:
        resource: Any = self.app.resource()
        return cast(IResource, resource)

    def site(self, *, timeout: float | None = None, access_log: bool = False) -> Site:
        """
        The resource in a ``Site`` that drops connections idle for ``timeout``
        seconds, and logs a line per request only with ``access_log`` (the
        dispatcher logs logins and jobs itself; a line per request costs a
        third of a cheap request's time).
        """
        request_class = type("BoundedRequest", (_BoundedRequest,), {"max_body": self.max_message_bytes})
        site = Site(self.resource(), requestFactory=request_class, timeout=timeout)
        site.displayTracebacks = False
        if not access_log:
            site.log = _no_access_log  # type: ignore[method-assign]
        return site

    def _client_address(self, request: Any) -> str:
        forwarded = None
        if self.trust_proxy:
            values = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
            forwarded = b",".join(values).decode("latin-1")
        return client_address(peer_host(request.getClientAddress()), forwarded, self.trust_proxy)

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
        return _body(envelope)

    def _error(self, request: Any, code: int, detail: str, namespace: str = "rpc") -> bytes:
        return self._answer(request, error_reply(namespace, "", RPCError(code, detail)))

    @app.route("/<string:namespace>/<string:name>", methods=None)
    def rpc(self, request: Any, namespace: str, name: str) -> Any:
        session = Session(peer=self._client_address(request), transport="rest")
        try:
            # Before anything else, and so before any credentials are looked at.
            self.router.check_address(session)
        except RPCError as e:
            if (namespace, name) == ("rpc", "auth") or _header(request, b"authorization")[:6].lower() == "basic ":
                self.router.auth.count_login("rest", "blocked")
            return self._answer(request, error_reply(namespace if namespace == "events" else "rpc", "", e))
        if request.method not in (b"PUT", b"POST"):
            return self._error(request, 405, f"use PUT (or POST) /{namespace}/{name}, not {request.method.decode()}")
        content = request.content
        content.seek(0, 2)
        size = max(content.tell(), getattr(request, "body_size", 0))
        if size > self.max_message_bytes:
            limit = self.max_message_bytes
            return self._error(request, 413, f"the body is {size} bytes, more than the limit of {limit}")
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

        if (namespace, name) not in PUBLIC:
            try:
                waiting = self._authenticate(request, session)
            except RPCError as e:
                return self._answer(request, error_reply(refusal_namespace, "", e))
            if waiting is not None:
                return waiting.addCallbacks(respond, refused)
        elif (namespace, name) == ("rpc", "auth_clear"):
            self._bearer(request, session)
        # Most requests are answered at once: no Deferred for Klein to wait on.
        d = respond()
        done, body = settled(d)
        return body if done else d

    def _bearer(self, request: Any, session: Session) -> None:
        header = _header(request, b"authorization")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            session.token = value.strip()

    def _authenticate(self, request: Any, session: Session) -> Deferred[None] | None:
        """
        Check the request's credentials: ``None`` when that is settled at once
        (a token, or cached Basic credentials), else a Deferred.  Raises or
        fails with ``RPCError``.
        """
        header = _header(request, b"authorization")
        if not header:
            raise RPCError(401, "credentials missing: send Authorization: Basic or Bearer")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            session.token = value
            return None
        if scheme != "basic":
            raise RPCError(401, f"unsupported authorization scheme {scheme[:32]!r}: use Basic or Bearer")
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise RPCError(401, "malformed Basic credentials") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise RPCError(401, "malformed Basic credentials: expected user:password")

        def ok(user: User) -> None:
            session.user = user

        def failed(f: Failure) -> None:
            if f.check(AddressBlocked):
                raise RPCError(403, str(f.value))
            f.trap(LoginFailed)
            log.info("failed login for {username!r} from {peer}", username=username[:64], peer=session.peer)
            raise RPCError(401, "bad username or password")

        d = self.router.auth.login_cached(username, password, session.peer, transport="rest").addCallbacks(ok, failed)
        return None if settled(d)[0] else d

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


