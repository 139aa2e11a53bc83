"""
Refusing a REST request from its headers alone, before its body is read:
a blocked address, missing or bad credentials, a body declared too big.
Until its credentials are known good a request may carry only a small
body (docs/security.rst).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..api.router import Router, RPCError, Session, error_reply
from ..auth.blocking import AddressBlocked
from ..auth.login import LoginBusy
from ..auth.users import LoginFailed, User
from .limits import client_address, peer_host
from .rest_site import BoundedRequest, header_of

log = Logger()


class HeaderScreen:
    """What the site asks once a request's headers are complete (``check``)."""

    def __init__(self, router: Router, *, max_message_bytes: int, max_unauthenticated_bytes: int,
                 trust_proxy: bool) -> None:
        self.router = router
        self.max_message_bytes = max_message_bytes
        self.max_unauthenticated_bytes = max_unauthenticated_bytes
        self.trust_proxy = trust_proxy

    def check(self, request: BoundedRequest, length: int | None) -> None:
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
        session = Session(peer=request_address(request, self.trust_proxy), transport="rest")

        def refuse(code: int, detail: str) -> None:
            request.refuse(error_reply(namespace, "", RPCError(code, detail)))

        try:
            self.router.check_address(session)
        except RPCError as e:
            if key == ("rpc", "auth") or header_of(request, b"authorization")[:6].lower() == "basic ":
                self.router.auth.count_login("rest", "blocked")
            return refuse(e.code, e.detail)
        public = self.router.is_public(*key)
        if not public:
            header = header_of(request, b"authorization")
            scheme, _, value = header.partition(" ")
            scheme, value = scheme.lower(), value.strip()
            if scheme == "bearer" and value:
                if not self.router.auth.tokens.valid(value):
                    return refuse(401, "unknown or expired token")
                request.max_body = self.max_message_bytes
            else:
                try:
                    basic_credentials(header)
                except RPCError as e:
                    return refuse(e.code, e.detail)
        if not public and scheme == "basic":
            if length is not None and length > self.max_message_bytes:
                return refuse(413, f"the body is {length} bytes, more than the limit of {self.max_message_bytes}")
            self._screen_basic(request, session, *basic_credentials(header), refuse)
        elif length is not None and length > request.max_body:
            without = " without valid credentials" if request.max_body < self.max_message_bytes else ""
            return refuse(413, f"the body is {length} bytes, more than the limit of {request.max_body}{without}")

    def _screen_basic(self, request: BoundedRequest, session: Session, username: str, password: str,
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


def basic_credentials(header: str) -> tuple[str, str]:
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


def request_address(request: Any, trust_proxy: bool) -> str:
    """The address to count a request's client by (see ``client_address``)."""
    forwarded = None
    if trust_proxy:
        values = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        forwarded = b",".join(values).decode("latin-1")
    return client_address(peer_host(request.getClientAddress()), forwarded, trust_proxy)
