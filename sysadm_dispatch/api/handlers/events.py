"""``events/subscribe`` and ``events/unsubscribe`` (any user, over a transport that can push events)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from ..envelope import RPCError
from ..session import Subscriber
from ..table import Call, HandlerTable, Role


def register(table: HandlerTable) -> None:
    table.register("events", "subscribe", subscribe, role=Role.READ)
    table.register("events", "unsubscribe", unsubscribe, role=Role.READ)


def _names(call: Call, verb: str) -> tuple[Subscriber, list[str]]:
    events, args = call.session.events, call.args
    if events is None:
        raise RPCError(400, f"events/{verb} needs a WebSocket connection; this transport cannot push events")
    if isinstance(args, str):
        names = [args]
    elif isinstance(args, list) and all(isinstance(a, str) for a in args):
        names = list(args)
    else:
        raise RPCError(400, f"events/{verb}: args must be an event name or a list of names")
    hub_names = call.services.dispatcher.events.names
    known = [n for n in names if n in hub_names]
    if not known:
        raise RPCError(400, f"events/{verb}: no known event named (known: {', '.join(hub_names)})")
    return events, known


def subscribe(call: Call) -> Deferred[Any]:
    events, names = _names(call, "subscribe")
    for name in names:
        events.subscribe(name)
    return succeed({"subscribe": names[0] if len(names) == 1 else names})


def unsubscribe(call: Call) -> Deferred[Any]:
    events, names = _names(call, "unsubscribe")
    for name in names:
        events.unsubscribe(name)
    return succeed({"unsubscribe": names[0] if len(names) == 1 else names})
