"""
The handlers, one module per area of the protocol (docs/protocol.rst):
``auth``, ``identify`` (with ``query``), ``dispatcher``, ``logs`` and
``events``.  Each module's ``register(table)`` adds its handlers to a
``HandlerTable``; ``standard_table()`` is the table the server serves.
"""

from __future__ import annotations

from ..table import HandlerTable
from . import auth, dispatcher, events, identify, logs

AREAS = (auth, identify, dispatcher, logs, events)


def standard_table() -> HandlerTable:
    """A fresh table with every area's handlers."""
    table = HandlerTable()
    for area in AREAS:
        area.register(table)
    return table
