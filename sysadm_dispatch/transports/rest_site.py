"""
The HTTP side of the REST transport: a ``Site`` whose connections are
counted against caps and timed until they send a complete request, and
whose requests keep a bounded body and can be refused from their headers
alone (``screen``, see rest_screen.py), before their body is read.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from ..api.router import RPCError, error_reply
from ..auth.users import User
from .limits import ConnectionCounter, peer_host

log = Logger()

#: What the site calls when a request's headers are complete: ``screen(request, declared_length)``.
Screen = Callable[["BoundedRequest", "int | None"], None]


def body(result: dict[str, Any] | None) -> bytes:
    if result is None:
        return b""
    return json.dumps({"args": result["args"]}, separators=(",", ":"), ensure_ascii=False).encode()


def header_of(request: Any, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value else ""


def _raw_response(version: bytes, code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A whole HTTP response that closes its connection."""
    phrase = HTTPStatus(code).phrase.encode()
    lines = [b"%s %d %s" % (version if version in (b"HTTP/1.0", b"HTTP/1.1") else b"HTTP/1.1", code, phrase)]
    lines += [b"%s: %s" % header for header in headers]
    lines += [b"Content-Length: %d" % len(body), b"Connection: close", b"", body]
    return b"\r\n".join(lines)


def refusal_response(version: bytes, envelope: dict[str, Any]) -> bytes:
    code = envelope["args"]["code"]
    headers = [(b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")]
    if code == 401:
        headers.append((b"WWW-Authenticate", b'Basic realm="sysadm-dispatch"'))
    return _raw_response(version, code, headers, body(envelope))


class BoundedRequest(Request):
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
        transport.write(refusal_response(channel._version, envelope))
        transport.loseConnection()


class GuardedChannel(HTTPChannel):
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
            transport.write(refusal_response(b"HTTP/1.1", envelope))
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


class GuardedSite(Site):
    """A ``Site`` that counts connections, screens request headers, and sets the request timeout."""

    protocol = GuardedChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, screen: Screen, *, trust_proxy: bool, max_per_address: int, max_total: int,
                 request_timeout: float, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.screen = screen
        self.trust_proxy = trust_proxy
        self.per_address = ConnectionCounter(max_per_address)
        self.max_total = max_total
        self.total = 0
        self.request_timeout = request_timeout

    def admit(self, address: str) -> str | None:
        """Count a new connection; a reason to refuse it, or ``None``."""
        if self.max_total and self.total >= self.max_total:
            log.info("refused a REST connection from {peer}: {limit} are open", peer=address, limit=self.max_total)
            return f"too many connections: the server holds {self.max_total}; try again later"
        if not self.trust_proxy and not self.per_address.acquire(address):
            limit = self.per_address.limit
            log.info("refused a REST connection from {peer}: it already has {limit}", peer=address, limit=limit)
            return f"too many connections from {address} (limit {limit})"
        self.total += 1
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        if not self.trust_proxy:
            self.per_address.release(address)



def no_access_log(request: Any) -> None:
    pass
