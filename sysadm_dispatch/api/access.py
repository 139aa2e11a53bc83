"""
Who may call what: the address guard, the logged-in user, full access.
The handler table applies these from the role each handler registered.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from ..auth.blocking import AddressBlocked
from ..auth.login import Authenticator
from ..auth.users import LoginFailed, User
from .envelope import RPCError
from .session import Session

log = Logger()


def check_address(auth: Authenticator, session: Session) -> None:
    """``RPCError(403)`` while the session's address is blocked after failed logins."""
    try:
        auth.guard.check(session.peer)
    except AddressBlocked as e:
        raise RPCError(403, str(e)) from None


def require_user(auth: Authenticator, session: Session) -> User:
    """The session's user, its token checked again; ``RPCError(401)`` if there is none."""
    if session.token is not None:
        try:
            session.user = auth.use_token(session.token)
        except LoginFailed:
            session.user = None
            session.token = None
            raise RPCError(401, "the session's token has expired or was revoked; log in again") from None
    if session.user is None:
        raise RPCError(401, "not authenticated: log in with rpc/auth first")
    return session.user


def require_full(auth: Authenticator, session: Session, what: str, args: Any = None) -> None:
    """``RPCError(403)`` unless the session's user has full access; the refusal is logged."""
    user = require_user(auth, session)
    if not user.may_write:
        # The audit trail: who tried what, from where.
        log.info("refused: user {username} from {peer} has read-only access and may not {what}: {jobs}",
                 username=user.name, peer=session.peer, what=what, jobs=job_ids(args))
        raise RPCError(403, f"user {user.name!r} has read-only access and may not {what}")


def job_ids(args: Any) -> str:
    """The job ids a ``run`` or ``kill`` names, for the log (not their commands or environment)."""
    if not isinstance(args, dict):
        return "?"
    if "job_id" in args:
        ids = args["job_id"]
    elif isinstance(args.get("jobs"), list):
        ids = [job.get("id", f"jobs[{n}]") if isinstance(job, dict) else "?" for n, job in enumerate(args["jobs"])]
    else:
        ids = [key for key in args if key != "action"]
    return ascii(ids)[:200]
