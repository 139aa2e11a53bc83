"""
The REST transport: ``PUT /<namespace>/<name>`` with a JSON body, answered
with the router's reply as ``{"args": ...}`` and the reply's code as the
HTTP status.  Credentials come with every request, as HTTP Basic auth or a
Bearer token from ``rpc/auth``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from http import HTTPStatus
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from werkzeug.exceptions import NotFound

from ..api.router import Router, RPCError, Session, error_reply
from ..auth.blocking import AddressBlocked
from ..auth.login import LoginBusy, LoginFailed, User
from ..ops.health import HealthCheck
from .limits import ConnectionCounter, client_address, peer_host

log = Logger()

ALLOWED = b"PUT, POST"


def _body(result: dict[str, Any] | None) -> bytes:
    if result is None:
        return b""
    return json.dumps({"args": result["args"]}, separators=(",", ":"), ensure_ascii=False).encode()


def _header(request: Any, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value else ""


def _raw_response(version: bytes, code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A whole HTTP response that closes its connection."""
    phrase = HTTPStatus(code).phrase.encode()
    lines = [b"%s %d %s" % (version if version in (b"HTTP/1.0", b"HTTP/1.1") else b"HTTP/1.1", code, phrase)]
    lines += [b"%s: %s" % header for header in headers]
    lines += [b"Content-Length: %d" % len(body), b"Connection: close", b"", body]
    return b"\r\n".join(lines)


def _refusal_response(version: bytes, envelope: dict[str, Any]) -> bytes:
    code = envelope["args"]["code"]
    headers = [(b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")]
    if code == 401:
        headers.append((b"WWW-Authenticate", b'Basic realm="sysadm-dispatch"'))
    return _raw_response(version, code, headers, _body(envelope))


class _BoundedRequest(Request):
    """
    A request that keeps at most ``max_body`` bytes of its body, in memory
    (never a temporary file), and counts the rest, so an oversized body
    costs neither memory nor disk before it is answered 413.

    Its headers are screened as soon as they are complete (``screen`` on
    the site): a request that cannot be served (no valid credentials, a
    blocked address, a body declared too big) is answered then, and its
    connection closed without reading the body.
    """

    max_body = 1 << 20
    body_size = 0
    #: Answered from the headers: the body is not read, the request not served.
    refused = False
    #: Serving it has begun (its body is complete).
    processing = False
    #: A Basic login started from the headers, for the request to wait on.
    basic_login: Deferred[User] | None = None

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        screen = getattr(getattr(self.channel, "site", None), "screen", None)
        if screen is not None:
            screen(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self.body_size += len(data)
        if self.body_size <= self.max_body:
            super().handleContentChunk(data)

    def process(self) -> None:
        if self.refused:
            return
        self.processing = True
        super().process()

    def refuse(self, envelope: dict[str, Any]) -> None:
        """Answer now, from the headers, and close the connection without reading more."""
        if self.refused or self.processing or self.channel is None:
            return
        self.refused = True
        self.content = io.BytesIO()
        channel: Any = self.channel
        transport: Any = channel.transport
        transport.write(_refusal_response(channel._version, envelope))
        transport.loseConnection()


class _GuardedChannel(HTTPChannel):
    """
    An HTTP connection counted against the site's caps (per client address
    and in all), and closed if it has not sent a complete request within
    the site's ``request_timeout`` seconds of opening or of its last answer
    (however slowly it trickles bytes meanwhile).
    """

    site: Any
    _counted: str | None = None
    _request_call: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        transport: Any = self.transport
        address = peer_host(transport.getPeer())
        refusal = site.admit(address)
        if refusal is not None:
            envelope = error_reply("rpc", "", RPCError(503, refusal))
            transport.write(_refusal_response(b"HTTP/1.1", envelope))
            transport.loseConnection()
            return
        self._counted = address
        self._wait_for_request()

    def _wait_for_request(self) -> None:
        timeout = self.site.request_timeout
        if timeout:
            self._request_call = self.callLater(timeout, self._request_timed_out)

    def _request_timed_out(self) -> None:
        self._request_call = None
        log.info("closing REST connection from {peer}: no complete request within {seconds:g} s",
                 peer=self._counted, seconds=self.site.request_timeout)
        transport: Any = self.transport
        transport.abortConnection()

    def _stop_waiting(self) -> None:
        if self._request_call is not None:
            if self._request_call.active():
                self._request_call.cancel()
            self._request_call = None

    def _send100Continue(self) -> None:
        # Not after a refusal from the headers: its answer is written already.
        if not (self.requests and getattr(self.requests[-1], "refused", False)):
            super()._send100Continue()

    def allContentReceived(self) -> None:
        self._stop_waiting()
        request = self.requests[-1] if self.requests else None
        if request is not None and request.requestHeaders.hasHeader(b"upgrade") and self._counted is not None:
            # Becoming a WebSocket (a factory mounted on this site): the
            # connection leaves this count, and this channel may never hear
            # of its end.
            self.site.release(self._counted)
            self._counted = None
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self.persistent and not self.requests and self._counted is not None:
            self._wait_for_request()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._stop_waiting()
        if self._counted is not None:
            self.site.release(self._counted)
            self._counted = None
        super().connectionLost(reason)


class _GuardedSite(Site):
    """A ``Site`` that counts connections, screens request headers, and sets the request timeout."""

    protocol = _GuardedChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, api: RestAPI, *, max_per_address: int, max_total: int,
                 request_timeout: float, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.api = api
        self.per_address = ConnectionCounter(max_per_address)
        self.max_total = max_total
        self.total = 0
        self.request_timeout = request_timeout

    def admit(self, address: str) -> str | None:
        """Count a new connection; a reason to refuse it, or ``None``."""
        if self.max_total and self.total >= self.max_total:
            log.info("refused a REST connection from {peer}: {limit} are open", peer=address, limit=self.max_total)
            return f"too many connections: the server holds {self.max_total}; try again later"
        if not self.api.trust_proxy and not self.per_address.acquire(address):
            limit = self.per_address.limit
            log.info("refused a REST connection from {peer}: it already has {limit}", peer=address, limit=limit)
            return f"too many connections from {address} (limit {limit})"
        self.total += 1
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        if not self.api.trust_proxy:
            self.per_address.release(address)

    def screen(self, request: _BoundedRequest, length: int | None) -> None:
        self.api.screen(request, length)


def _no_access_log(request: Any) -> None:
    pass


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

    def resource(self) -> IResource:
        resource: Any = self.app.resource()
        return cast(IResource, resource)

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
        request_class = type("BoundedRequest", (_BoundedRequest,), {"max_body": self.max_message_bytes})
        site = _GuardedSite(self.resource(), self, requestFactory=request_class, timeout=timeout,
                            max_per_address=max_connections_per_address, max_total=max_connections,
                            request_timeout=request_timeout)
        site.displayTracebacks = False
        if not access_log:
            site.log = _no_access_log  # type: ignore[method-assign]
        return site

    def screen(self, request: _BoundedRequest, length: int | None) -> None:
        """
        A request's headers are complete, its body not yet read: refuse it now
        if its address is blocked, it has no valid credentials, or its body is
        declared too big.  Basic credentials not checked lately are checked
        while the connection is paused (nothing more is read meanwhile).
        """
        channel: Any = request.channel
        # Until its credentials are known good, a request may carry only a small body.
        request.max_body = self.max_unauthenticated_bytes
        method, path = getattr(channel, "_command", b""), getattr(channel, "_path", b"")
        parts = path.split(b"?", 1)[0].split(b"/")
        if method not in (b"PUT", b"POST") or len(parts) != 3 or parts[0]:
            return  # not a request to serve: answered 404 or 405 once read (its body capped)
        key = (parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace"))
        if key[0] not in ("rpc", "events"):
            return  # not the API (a page beside it, say): answered once read, its body capped
        namespace = "events" if key[0] == "events" else "rpc"
        session = Session(peer=self._client_address(request), transport="rest")

        def refuse(code: int, detail: str) -> None:
            request.refuse(error_reply(namespace, "", RPCError(code, detail)))

        try:
            self.router.check_address(session)
        except RPCError as e:
            if key == ("rpc", "auth") or _header(request, b"authorization")[:6].lower() == "basic ":
                self.router.auth.count_login("rest", "blocked")
            return refuse(e.code, e.detail)
        public = self.router.is_public(*key)
        if not public:
            header = _header(request, b"authorization")
            scheme, _, value = header.partition(" ")
            scheme, value = scheme.lower(), value.strip()
            if scheme == "bearer" and value:
                if not self.router.auth.tokens.valid(value):
                    return refuse(401, "unknown or expired token")
                request.max_body = self.max_message_bytes
            else:
                try:
                    self._basic(header)
                except RPCError as e:
                    return refuse(e.code, e.detail)
        if not public and scheme == "basic":
            if length is not None and length > self.max_message_bytes:
                return refuse(413, f"the body is {length} bytes, more than the limit of {self.max_message_bytes}")
            self._screen_basic(request, session, *self._basic(header), refuse)
        elif length is not None and length > request.max_body:
            without = " without valid credentials" if request.max_body < self.max_message_bytes else ""
            return refuse(413, f"the body is {length} bytes, more than the limit of {request.max_body}{without}")

    def _screen_basic(self, request: _BoundedRequest, session: Session, username: str, password: str,
                      refuse: Any) -> None:
        channel: Any = request.channel
        transport: Any = channel.transport
        handed: Deferred[User] = Deferred()
        # A cached success (or a refusal known at once) answers before
        # ``addCallbacks`` returns; only a check still running pauses the connection.
        answered = waiting = False

        def ok(user: User) -> None:
            nonlocal answered
            answered = True
            request.max_body = self.max_message_bytes
            if waiting:
                transport.resumeProducing()
                handed.callback(user)

        def failed(f: Failure) -> None:
            nonlocal answered
            answered = True
            if waiting and request.processing:
                handed.errback(f)  # the request is being served: it answers
            else:
                self._basic_refusal(f, username, session, refuse)

        self.router.auth.login_cached(username, password, session.peer, transport="rest").addCallbacks(ok, failed)
        if not answered:
            waiting = True
            transport.pauseProducing()  # nothing more is read meanwhile
            request.basic_login = handed

    def _basic_refusal(self, f: Failure, username: str, session: Session, refuse: Any) -> None:
        if f.check(AddressBlocked):
            refuse(403, str(f.value))
        elif f.check(LoginBusy):
            refuse(503, str(f.value))
        elif f.check(LoginFailed):
            log.info("failed login for {username!r} from {peer}", username=username[:64], peer=session.peer)
            refuse(401, "bad username or password")
        else:
            log.failure("checking Basic credentials failed", f)
            refuse(500, "internal error; the server log has the details")

    def _basic(self, header: str) -> tuple[str, str]:
        """The username and password of a Basic ``Authorization`` header; ``RPCError(401)`` if none."""
        if not header:
            raise RPCError(401, "credentials missing: send Authorization: Basic or Bearer")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme != "basic":
            raise RPCError(401, f"unsupported authorization scheme {scheme[:32]!r}: use Basic or Bearer")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise RPCError(401, "malformed Basic credentials") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise RPCError(401, "malformed Basic credentials: expected user:password")
        return username, password

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
        header = _header(request, b"authorization")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            session.token = value.strip()

    def _authenticate(self, request: Any, session: Session) -> Deferred[None]:
        """
        Check the request's credentials: a Deferred that fires when they are
        good (at once for a token: the router checks it), or fails with
        ``RPCError``; raises it for credentials that cannot be good.
        """
        header = _header(request, b"authorization")
        if not header:
            raise RPCError(401, "credentials missing: send Authorization: Basic or Bearer")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            session.token = value
            return succeed(None)
        username, password = self._basic(header)

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


