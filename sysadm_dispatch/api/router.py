"""
The router every transport shares: envelopes in, replies out, through one
handler table.

A transport hands each request to ``Router.handle_bytes`` (or
``handle_request`` when it has already parsed it) together with the
``Session`` of the connection, and gets back a Deferred reply envelope
(``None`` for a request answered with none, ``rpc/auth_clear``); it adds
its callbacks and never looks inside.  A transport that only hands each
reply on (the WebSocket one) passes its continuation to ``answer_bytes``
instead: the callback that shapes the envelope calls it, one callback per
request where adding its own would run a second.  The handlers live in the table
(``api/table.py``, ``api/handlers``); they raise ``RPCError``, and anything
else is a bug, logged with its traceback and answered 500 without it.
The wire protocol is described in docs/protocol.rst.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..auth.login import Authenticator
from ..core.dispatcher import Dispatcher
from . import access
from .envelope import (
    MAX_DEPTH,
    MAX_STRING_CHARS,
    RPCError,
    check_message,
    decode_json,
    echo_namespace,
    echo_of,
    error_reply,
    parse_json,
    reply,
)
from .handlers import standard_table
from .session import Session, Subscriber
from .table import HandlerTable, Role

__all__ = [
    "MAX_DEPTH", "MAX_STRING_CHARS", "PUBLIC", "HandlerTable", "RPCError", "Role", "Router", "Session", "Subscriber",
    "check_message", "decode_json", "error_reply", "reply",
]

log = Logger()

#: A reply envelope, or ``None`` for a request answered with none.
Reply = dict[str, Any] | None
T = TypeVar("T")


def _same(envelope: Reply) -> Reply:
    return envelope


#: The requests of the standard table that need no logged-in user.
PUBLIC = frozenset(standard_table().public_names())


class Router:
    """The envelope rules around one ``HandlerTable`` (the standard one unless ``table`` is given)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        auth: Authenticator,
        *,
        max_message_bytes: int = 1 << 20,
        max_depth: int = MAX_DEPTH,
        max_string_chars: int = MAX_STRING_CHARS,
        table: HandlerTable | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.auth = auth
        self.max_message_bytes = max_message_bytes
        self.max_depth = max_depth
        self.max_string_chars = max_string_chars
        self.hostname = socket.gethostname()
        self.table = standard_table() if table is None else table

    # Entry points for transports.

    def decode(self, data: bytes) -> Any:
        """Parse a message within this router's depth and string limits; raises ``RPCError(400)``."""
        return decode_json(data, self.max_depth, self.max_string_chars)

    def check_address(self, session: Session) -> None:
        """``RPCError(403)`` while the session's address is blocked after failed logins."""
        access.check_address(self.auth, session)

    def is_public(self, namespace: str, name: str) -> bool:
        """Whether ``namespace/name`` is answered without a logged-in user."""
        return self.table.is_public(namespace, name)

    def handle_bytes(self, session: Session, data: bytes) -> Deferred[Reply]:
        """One whole message from a client; fires with the reply envelope or ``None``."""
        return self.answer_bytes(session, data, _same)

    def handle_message(self, session: Session, message: Any) -> Deferred[Reply]:
        return self._message(session, message, _same)

    def handle_request(self, session: Session, namespace: str, name: str, request_id: str,
                       args: Any) -> Deferred[Reply]:
        """One parsed request; fires with its reply envelope (never fails)."""
        return self._request(session, namespace, name, request_id, args, _same)

    def answer_bytes(self, session: Session, data: bytes, answer: Callable[[Reply], T]) -> Deferred[T]:
        """
        As ``handle_bytes``, but the reply envelope goes to ``answer`` (which
        must not raise) as soon as it is known, and the Deferred fires with
        what ``answer`` returns; a refusal is answered before this returns.
        """
        if len(data) > self.max_message_bytes:
            e = RPCError(413, f"the message is {len(data)} bytes, more than the limit of {self.max_message_bytes}")
            return self._refusal(session, "rpc", "", e, answer)
        try:
            message, suspect = parse_json(data, self.max_depth, self.max_string_chars)
        except RPCError as e:
            return self._refusal(session, "rpc", "", e, answer)
        if suspect:
            try:
                check_message(message, suspect, self.max_depth, self.max_string_chars)
            except RPCError as e:
                # Parsed: the reply keeps the request's id, for clients that match replies by it.
                namespace, request_id = echo_of(message, self.max_string_chars)
                return self._refusal(session, namespace, request_id, e, answer)
        return self._message(session, message, answer)

    def _message(self, session: Session, message: Any, answer: Callable[[Reply], T]) -> Deferred[T]:
        if not isinstance(message, dict):
            return self._refusal(session, "rpc", "", RPCError(400, "the message must be a JSON object"), answer)
        request_id = message.get("id", "")
        if not isinstance(request_id, str):
            # Echo what can be echoed: ids are strings on this protocol.
            request_id = json.dumps(request_id)[:256] if isinstance(request_id, int | float) else ""
        namespace = message.get("namespace")
        name = message.get("name")
        if not isinstance(namespace, str) or not isinstance(name, str):
            missing = "namespace" if not isinstance(namespace, str) else "name"
            e = RPCError(400, f"{missing} must be a string")
            return self._refusal(session, echo_namespace(namespace), request_id, e, answer)
        return self._request(session, namespace, name, request_id, message.get("args"), answer)

    def _request(self, session: Session, namespace: str, name: str, request_id: str, args: Any,
                 answer: Callable[[Reply], T]) -> Deferred[T]:
        d = self.table.call(self, session, namespace, name, args)
        # One pair of callbacks shapes the envelope and hands it on.
        where = (echo_namespace(namespace), request_id, namespace, name, answer)
        return d.addCallbacks(self._answered, self._failed, callbackArgs=where, errbackArgs=where)

    def _answered(self, result: Any, echo: str, request_id: str, namespace: str, name: str,
                  answer: Callable[[Reply], T]) -> T:
        if self.table.is_silent(namespace, name):
            return answer(None)
        return answer(reply(echo, request_id, result))

    def _failed(self, f: Failure, echo: str, request_id: str, namespace: str, name: str,
                answer: Callable[[Reply], T]) -> T:
        if f.check(RPCError):
            return answer(error_reply(echo, request_id, cast(RPCError, f.value)))
        log.failure("bug while handling {namespace}/{name}", f, namespace=namespace, name=name)
        return answer(error_reply(echo, request_id, RPCError(500, "internal error; the server log has the details")))

    def _refusal(self, session: Session, namespace: str, request_id: str, e: RPCError,
                 answer: Callable[[Reply], T]) -> Deferred[T]:
        """An early error reply; a blocked address gets its 403 instead, whatever it sent."""
        try:
            self.check_address(session)
        except RPCError as blocked:
            e = blocked
        return succeed(answer(error_reply(namespace, request_id, e)))
