"""
sysadm-dispatch: run programs on demand for remote clients.

The embedding API: ``make_server``, the whole server as one service (as
``twistd sysadm-dispatch`` runs it); or the pieces: a ``Dispatcher`` to run
jobs from Python, and the transports to serve it, sharing one ``Router`` (and
so one token store).
Names are imported on first use, so the console script starts quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Dispatcher": "core.dispatcher",
    "Unavailable": "core.dispatcher",
    "Event": "core.events",
    "EventBatch": "core.events",
    "InvalidJob": "core.spec",
    "Store": "store.database",
    "StoreError": "store.records",
    "HistoryPruner": "store.retention",
    "make_rest_resource": "embed",
    "make_router": "embed",
    "make_websocket_factory": "embed",
    "make_server": "server",
    "Server": "server",
    "ServerConfig": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sysadm_dispatch' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
