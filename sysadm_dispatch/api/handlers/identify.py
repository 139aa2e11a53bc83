"""``rpc/identify`` (no login) and ``rpc/query``: what this server is, and what the caller may call."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from ..table import Call, HandlerTable, Role


def register(table: HandlerTable) -> None:
    table.register("rpc", "identify", identify, role=Role.PUBLIC)
    table.register("rpc", "query", query, role=Role.READ)


def identify(call: Call) -> Deferred[Any]:
    return succeed({"type": "server", "hostname": call.services.hostname})


def query(call: Call) -> Deferred[Any]:
    """Read from the table: every name that needs a login, and whether this user may write there."""
    user = call.session.user
    assert user is not None  # the table let only a logged-in session through
    return succeed(call.services.table.listing(user))
