"""
The parts of the reactor the core uses, as types.

They mirror Twisted's ``IReactorTime``, ``IDelayedCall`` and
``IReactorThreads`` method for method, as structural types: the reactor
and ``twisted.internet.task.Clock`` satisfy them as they are, and mypy
checks their use without a zope.interface plugin (which it needs to
understand the interfaces themselves).  The core never reaches for a
global reactor: it is given one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.python.threadpool import ThreadPool


class DelayedCall(Protocol):
    """``IDelayedCall``: what ``callLater`` returns."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, secondsFromNow: float) -> None: ...


class ReactorTime(Protocol):
    """``IReactorTime``: the clock and timers, all the core needs of a reactor."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object], *args: object,
                  **kwargs: object) -> DelayedCall: ...


class ReactorThreads(Protocol):
    """``IReactorThreads``, as far as handing work to the reactor's thread pool goes."""

    def getThreadPool(self) -> ThreadPool: ...

    def callFromThread(self, callable: Callable[..., object], *args: object, **kwargs: object) -> None: ...
