"""
The store's writer: one thread of its own that runs every SQLite call of
one store, in the order asked.

Requests queue under a lock.  One pass on the thread takes every request
waiting (``max_batch`` at most): consecutive writes share one transaction
and one commit, reads run alone, and the results go back to the reactor
thread in one call, where each request's Deferred fires.  Requests made
meanwhile wait for the next pass, which starts as soon as this one ends.

(Not a one-thread ``twisted.python.threadpool.ThreadPool``: measured,
its hand-off cut the rate of requests made one at a time by about a
third; see docs/benchmarks.rst, "The store's writer thread".)
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ..reactors import IClockFromThreads
from .records import StoreError
from .tables import Tables

#: A pass's outcome: each request's Deferred with its result (or Failure),
#: and how long each of its commits took.
PassResult = tuple[list[tuple[Deferred[Any], Any]], list[float]]


class _Call:
    __slots__ = ("args", "deferred", "fn", "write")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], write: bool) -> None:
        self.fn = fn
        self.args = args
        self.write = write
        self.deferred: Deferred[Any] = Deferred()


class Writer:
    """
    Runs the requests of one store on a thread of its own, in order.
    ``observe`` is called on the reactor thread with each pass's results
    and commit times, before the requests' Deferreds fire.
    """

    def __init__(self, reactor: IClockFromThreads, tables: Tables, *, observe: Callable[[PassResult], None],
                 max_batch: int = 512) -> None:
        self.reactor = reactor
        self.tables = tables
        self.max_batch = max_batch
        self._observe = observe
        self._calls: deque[_Call] = deque()
        self._wake = threading.Condition()
        self._last: _Call | None = None
        #: The writer thread, from ``start`` until it has run the last request.
        #: (A daemon: a store its program never closed does not hold the process at exit.)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name=f"store {self.tables.path}", daemon=True)
            self.thread.start()

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], *, write: bool,
               last: bool = False) -> Deferred[Any]:
        """
        Queue a request; its Deferred fires with what ``fn`` returns on the
        writer thread.  After the ``last`` request, the thread ends and
        nothing more may be submitted.
        """
        if self._last is not None:
            raise RuntimeError("the store's writer has stopped")
        call = _Call(fn, args, write)
        if last:
            self._last = call
        with self._wake:
            self._calls.append(call)
            self._wake.notify()
        return call.deferred

    def _delivered(self, result: PassResult) -> None:
        self._observe(result)
        for d, outcome in result[0]:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)

    # On the writer thread.

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._calls:
                    self._wake.wait()
                calls = [self._calls.popleft() for _ in range(min(len(self._calls), self.max_batch))]
            self.reactor.callFromThread(self._delivered, self._run(calls))
            if any(call is self._last for call in calls):
                return

    def _run(self, calls: list[_Call]) -> PassResult:
        results: list[tuple[Deferred[Any], Any]] = []
        commits: list[float] = []
        i = 0
        while i < len(calls):
            if calls[i].write:
                j = i
                while j < len(calls) and calls[j].write:
                    j += 1
                began = time.monotonic()
                results += self._write(calls[i:j])
                commits.append(time.monotonic() - began)
                i = j
            else:
                results.append((calls[i].deferred, self._read(calls[i])))
                i += 1
        return results, commits

    def _read(self, call: _Call) -> Any:
        try:
            return call.fn(*call.args)
        except sqlite3.Error as e:
            return Failure(StoreError(f"the job store cannot read: {e}"))
        except Exception:
            return Failure()

    def _write(self, calls: list[_Call]) -> list[tuple[Deferred[Any], Any]]:
        conn = self.tables.conn
        if conn is None:
            return [(call.deferred, Failure(StoreError(self.tables.unavailable))) for call in calls]
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [call.fn(*call.args) for call in calls]
            conn.execute("COMMIT")
            return [(call.deferred, result) for call, result in zip(calls, results, strict=True)]
        except Exception as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if len(calls) > 1:
                # One bad request must not fail the others: each on its own.
                out: list[tuple[Deferred[Any], Any]] = []
                for call in calls:
                    out += self._write([call])
                return out
            if isinstance(e, sqlite3.Error):
                return [(calls[0].deferred, Failure(StoreError(f"the job store cannot write: {e}")))]
            return [(calls[0].deferred, Failure())]
