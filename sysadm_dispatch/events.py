"""
Events: who wants to hear about what.  The dispatcher publishes, transports
and embedding programs subscribe; nothing here knows either of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from typing import Any

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


Subscriber = Callable[[Event], None]


class Subscription:
    def __init__(self, hub: EventHub, name: str, callback: Subscriber) -> None:
        self.hub = hub
        self.name = name
        self.callback = callback

    def cancel(self) -> None:
        self.hub._subscribers.get(self.name, {}).pop(id(self), None)


class EventHub:
    """Subscribers per event name; ``publish`` calls each in subscription order."""

    def __init__(self, names: tuple[str, ...] = ("dispatcher",)) -> None:
        self.names = names
        self._subscribers: dict[str, dict[int, Subscription]] = {name: {} for name in names}

    def subscribe(self, name: str, callback: Subscriber) -> Subscription:
        if name not in self._subscribers:
            raise KeyError(name)
        subscription = Subscription(self, name, callback)
        self._subscribers[name][id(subscription)] = subscription
        return subscription

    def subscriber_count(self, name: str) -> int:
        return len(self._subscribers.get(name, {}))

    def publish(self, name: str, args: dict[str, Any]) -> Event:
        event = Event(name, args)
        for subscription in list(self._subscribers.get(name, {}).values()):
            try:
                subscription.callback(event)
            except Exception:
                # One broken subscriber must not keep the event from the others.
                log.failure("event subscriber {callback!r} failed", callback=subscription.callback)
        return event
