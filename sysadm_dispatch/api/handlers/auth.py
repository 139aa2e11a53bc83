"""``rpc/auth``, ``rpc/auth_token``, ``rpc/auth_clear``: logging in and out."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger

from ...auth.blocking import AddressBlocked
from ...auth.login import LoginBusy
from ...auth.users import LoginFailed
from ..envelope import RPCError, require_text
from ..table import Call, HandlerTable, Role

log = Logger()

#: The requests of this area: a transport whose peers are authenticated by
#: other means (WAMP: the router did it) refuses them.
NAMES = ("auth", "auth_token", "auth_clear")


def register(table: HandlerTable) -> None:
    table.register("rpc", "auth", login, role=Role.PUBLIC, login=True)
    table.register("rpc", "auth_token", use_token, role=Role.PUBLIC)
    # No reply, and answered even from a blocked address: it only forgets a token.
    table.register("rpc", "auth_clear", clear, role=Role.PUBLIC, silent=True, unscreened=True)


@inlineCallbacks
def login(call: Call) -> Any:
    args, session, auth = call.args, call.session, call.services.auth
    if not isinstance(args, dict):
        raise RPCError(400, "auth: args must be an object with username and password")
    username, password = args.get("username"), args.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise RPCError(400, "auth: username and password must be strings")
    require_text("auth", username=username, password=password)
    session.logging_in += 1
    try:
        user = yield auth.login(username, password, session.peer, transport=session.transport)
    except AddressBlocked as e:
        raise RPCError(403, str(e)) from None
    except LoginBusy as e:
        log.info("refused a login for {username!r} from {peer}: {why}", username=username[:64],
                 peer=session.peer, why=str(e))
        raise RPCError(503, str(e)) from None
    except LoginFailed:
        log.info("failed login for {username!r} from {peer}", username=username[:64], peer=session.peer)
        raise RPCError(401, "bad username or password") from None
    finally:
        session.logging_in -= 1
    if session.token is not None:
        auth.revoke_token(session.token)
    session.user = user
    session.token = auth.issue_token(user)
    log.info("user {username} logged in from {peer}", username=user.name, peer=session.peer)
    return [session.token, int(auth.token_ttl)]


def use_token(call: Call) -> Deferred[Any]:
    args, session, auth = call.args, call.session, call.services.auth
    token = args.get("token") if isinstance(args, dict) else None
    if not isinstance(token, str):
        raise RPCError(400, "auth_token: args must be an object with a string token")
    require_text("auth_token", token=token)
    try:
        user = auth.use_token(token)
    except LoginFailed:
        raise RPCError(401, "unknown or expired token") from None
    session.user = user
    session.token = token
    return succeed([token, int(auth.token_ttl)])


def clear(call: Call) -> Deferred[None]:
    session = call.session
    if session.token is not None:
        call.services.auth.revoke_token(session.token)
    session.token = None
    session.user = None
    return succeed(None)
