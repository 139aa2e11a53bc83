"""
The reactor, as the package types it: Twisted's own interfaces
(``twisted.internet.interfaces``), and here the sums of them that one object
is used through, each a name for typing only.  Every reactor Twisted has on
POSIX provides them all; a test's ``Clock`` provides ``IReactorTime``.

Every room may import this module, and it imports nothing of the package
(docs/architecture.rst).
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorProcess,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)

__all__ = [
    "IClientReactor", "IClockFromThreads", "IDispatchReactor", "IProcessReactor", "IServerReactor", "IThreadedClock",
]


class IClockFromThreads(IReactorTime, IReactorFromThreads):
    """Timers, and results handed back from threads of one's own: the store's writer, PAM checks."""


class IThreadedClock(IClockFromThreads, IReactorThreads):
    """Timers, and work handed to the reactor's thread pool and back: password checks."""


class IProcessReactor(IReactorTime, IReactorFDSet, IReactorProcess):
    """Timers, file descriptors and processes: what starting and watching commands needs."""


class IDispatchReactor(IProcessReactor, IThreadedClock):
    """What a ``Dispatcher`` runs on: its timers, its commands, and its thread pool."""


class IServerReactor(IDispatchReactor, IReactorCore, IReactorTCP):
    """What the whole server runs on: all of the above, its listeners and its shutdown."""


class IClientReactor(IReactorCore, IReactorTime, IReactorFDSet, IReactorFromThreads, IReactorTCP):
    """What the command-line client runs on: its connections, its timers, standard input and signals."""
