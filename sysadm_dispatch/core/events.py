"""
Events: who wants to hear about what.  The dispatcher publishes, transports
and embedding programs subscribe; nothing here knows either of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


class Event:
    """
    One event.  Its wire form is computed once, however many subscribers
    receive it.
    """

    __slots__ = ("__dict__", "args", "cache", "name")

    def __init__(self, name: str, args: dict[str, Any]) -> None:
        self.name = name
        self.args = args
        #: Where a transport may keep its own encoding of the event, made
        #: once for all its subscribers.
        self.cache: dict[str, Any] = {}

    @cached_property
    def frame(self) -> bytes:
        """The event as the JSON message a WebSocket client receives."""
        message = {"namespace": "events", "name": self.name, "id": "", "args": self.args}
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


class EventBatch:
    """
    The events of one name published during one reactor turn, in order, as
    a batched subscriber receives them.  Like an event's, its wire form is
    made once for all subscribers.
    """

    __slots__ = ("cache", "events")

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        #: Where a transport may keep its own encoding of the whole batch.
        self.cache: dict[str, Any] = {}


class Subscription:
    def __init__(self, hub: EventHub, name: str, callback: Callable[[Any], None], batched: bool,
                 after: int) -> None:
        self.hub = hub
        self.name = name
        self.callback = callback
        self.batched = batched
        #: The number of the last event published before it subscribed.
        self.after = after

    def cancel(self) -> None:
        table = self.hub._batched if self.batched else self.hub._direct
        table.get(self.name, {}).pop(id(self), None)


class EventHub:
    """
    Subscribers per event name.  ``publish`` calls each direct subscriber at
    once, in subscription order.  A batched subscriber gets, once per reactor
    turn, every event published in the turn: a burst of events reaches a
    thousand WebSocket clients as a thousand writes, not a thousand per
    event, and the reactor goes on serving requests in between.
    """

    def __init__(self, reactor: IReactorTime, names: tuple[str, ...] = ("dispatcher",)) -> None:
        self.names = names
        self.reactor = reactor
        self._direct: dict[str, dict[int, Subscription]] = {name: {} for name in names}
        self._batched: dict[str, dict[int, Subscription]] = {name: {} for name in names}
        self._published = 0
        self._waiting: dict[str, list[tuple[int, Event]]] = {}
        self._flush_call: IDelayedCall | None = None

    def subscribe(self, name: str, callback: Callable[[Any], None], *, batched: bool = False) -> Subscription:
        """
        ``callback(event)`` for every event ``name`` published from now on;
        with ``batched``, ``callback(batch)`` with an ``EventBatch`` per
        reactor turn instead.  Raises ``KeyError`` for an unknown name.
        """
        if name not in self._direct:
            raise KeyError(name)
        subscription = Subscription(self, name, callback, batched, self._published)
        (self._batched if batched else self._direct)[name][id(subscription)] = subscription
        return subscription

    def subscriber_count(self, name: str) -> int:
        return len(self._direct.get(name, {})) + len(self._batched.get(name, {}))

    def publish(self, name: str, args: dict[str, Any]) -> Event:
        event = Event(name, args)
        self._published += 1
        direct = self._direct.get(name)
        if direct:
            for subscription in list(direct.values()):
                try:
                    subscription.callback(event)
                except Exception:
                    # One broken subscriber must not keep the event from the others.
                    log.failure("event subscriber {callback!r} failed", callback=subscription.callback)
        if self._batched.get(name):
            self._waiting.setdefault(name, []).append((self._published, event))
            if self._flush_call is None:
                self._flush_call = self.reactor.callLater(0, self._flush)
        return event

    def _flush(self) -> None:
        self._flush_call = None
        waiting, self._waiting = self._waiting, {}
        for name, numbered in waiting.items():
            whole = EventBatch([event for _, event in numbered])
            first = numbered[0][0]
            for subscription in list(self._batched.get(name, {}).values()):
                if subscription.after < first:
                    batch = whole
                else:
                    # Subscribed during the turn: only what came after.
                    events = [event for number, event in numbered if number > subscription.after]
                    if not events:
                        continue
                    batch = EventBatch(events)
                try:
                    subscription.callback(batch)
                except Exception:
                    log.failure("event subscriber {callback!r} failed", callback=subscription.callback)
