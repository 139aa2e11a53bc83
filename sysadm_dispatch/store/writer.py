"""
The store's writer: one thread (a one-thread ``ThreadPool``) that runs
every SQLite call of one store, in the order asked.

Requests queue on the reactor thread.  One pass on the pool thread takes
every request waiting (``max_batch`` at most): consecutive writes share
one transaction and one commit, reads run alone, and the results come
back as the pass's Deferred, on the reactor thread, where each request's
own Deferred fires.  New requests wait while a pass runs and while its
results are delivered; then the next pass takes them all.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .records import StoreError
from .tables import Tables

#: A pass's outcome: each request's Deferred with its result (or Failure),
#: and how long each of its commits took.
PassResult = tuple[list[tuple[Deferred[Any], Any]], list[float]]


class DelayedCall(Protocol):
    """A call ``callLater`` scheduled (``IDelayedCall``), as the store uses it."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class StoreReactor(Protocol):
    """
    What the store uses of its reactor: ``seconds`` and ``callLater``
    (``IReactorTime``) and ``callFromThread`` (``IReactorFromThreads``, by
    way of ``deferToThreadPool``).
    """

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> DelayedCall: ...

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kw: Any) -> None: ...


class _Call:
    __slots__ = ("args", "deferred", "fn", "write")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], write: bool) -> None:
        self.fn = fn
        self.args = args
        self.write = write
        self.deferred: Deferred[Any] = Deferred()


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    # A store its program never closed must not keep the process from exiting.
    return threading.Thread(*args, daemon=True, **kwargs)


class Writer:
    """
    Runs the requests of one store on a one-thread pool, in order.
    ``observe`` is called on the reactor thread with each pass's results
    and commit times, before the requests' Deferreds fire.
    """

    def __init__(self, reactor: StoreReactor, tables: Tables, *, observe: Callable[[PassResult], None],
                 max_batch: int = 512) -> None:
        self.reactor = reactor
        self.tables = tables
        self.max_batch = max_batch
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name=f"store {tables.path}")
        self.pool.threadFactory = _daemon_thread  # type: ignore[assignment]
        self._observe = observe
        self._calls: deque[_Call] = deque()
        self._passing = False
        self._last: _Call | None = None

    def start(self) -> None:
        self.pool.start()

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], *, write: bool,
               last: bool = False) -> Deferred[Any]:
        """
        Queue a request; its Deferred fires with what ``fn`` returns on the
        pool thread.  After the ``last`` request, the pool stops (once its
        result is delivered) and nothing more may be submitted.
        """
        if self._last is not None:
            raise RuntimeError("the store's writer has stopped")
        call = _Call(fn, args, write)
        if last:
            self._last = call
        self._calls.append(call)
        if not self._passing:
            self._next_pass()
        return call.deferred

    def _next_pass(self) -> None:
        calls = [self._calls.popleft() for _ in range(min(len(self._calls), self.max_batch))]
        self._passing = True
        d = deferToThreadPool(cast(IReactorFromThreads, self.reactor), self.pool, self._run, calls)
        d.addCallbacks(self._passed, self._broken, errbackArgs=(calls,))

    def _passed(self, result: PassResult) -> None:
        if self._last is not None and not self._calls:
            # This pass held the last request: the thread is idle, and stays
            # so; it is gone before the last request's Deferred fires.
            self.pool.stop()
        # Requests made while the results are delivered (a client's next
        # one, as its reply goes out) wait to join the next pass with those
        # that queued while this one ran: one commit for them all.
        self._observe(result)
        for d, outcome in result[0]:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)
        self._passing = False
        if self._calls:
            self._next_pass()

    def _broken(self, failure: Failure, calls: list[_Call]) -> None:
        # A bug in the writer itself: every request of the pass fails with it.
        self._passed(([(call.deferred, failure) for call in calls], []))

    # On the pool thread.

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
