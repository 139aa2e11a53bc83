"""
The reactor as the auth room uses it, as typing protocols: the parts of
``IReactorTime`` and ``IReactorThreads`` called here, so a ``Clock`` (with
a thread pool, in tests) or the real reactor fits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.python.threadpool import ThreadPool


class DelayedCall(Protocol):
    """A call ``callLater`` scheduled (``IDelayedCall``)."""

    def getTime(self) -> float: ...

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """``IReactorTime``: what time it is, and calls later."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> DelayedCall: ...


class ThreadsClock(Clock, Protocol):
    """``IReactorTime`` and ``IReactorThreads``: a clock that also runs work off the reactor thread."""

    def getThreadPool(self) -> ThreadPool: ...

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kw: Any) -> None: ...
