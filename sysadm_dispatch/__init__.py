"""
sysadm-dispatch: run programs on demand for remote clients.

The embedding API: a ``Dispatcher`` to run jobs from Python, and the
transports to serve it, sharing one ``Router`` (and so one token store).
"""

from .dispatcher import Dispatcher, Unavailable
from .embed import make_rest_resource, make_router, make_websocket_factory
from .events import Event
from .job import InvalidJob

__all__ = [
    "Dispatcher",
    "Event",
    "InvalidJob",
    "Unavailable",
    "make_rest_resource",
    "make_router",
    "make_websocket_factory",
]
