"""Who is on the other end of one connection, as the handlers see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..auth.users import User


class Subscriber(Protocol):
    """What a transport that can push events offers the handlers."""

    def subscribe(self, name: str) -> None: ...

    def unsubscribe(self, name: str) -> None: ...


@dataclass
class Session:
    """
    Who is on the other end of one connection (or one HTTP request).
    ``events`` is set by transports that can push events.
    """

    peer: str
    user: User | None = None
    token: str | None = None
    events: Subscriber | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Logins under way on this session: requests that follow one on the
    #: same connection must wait for it, to run as the user it logs in.
    logging_in: int = 0
    #: ``rest``, ``websocket`` or ``wamp``: what the metrics count logins by.
    transport: str = ""
