"""
Failed-login blocking: how often an address got the password wrong, and
whether it is refused for a while.  Pure bookkeeping on an injected clock;
the api decides what to answer.  The policy is described in docs/security.rst.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


class AddressBlocked(Exception):
    """Too many failed logins came from this address; it is refused for a while."""

    def __init__(self, address: str, seconds_left: float) -> None:
        super().__init__(address, seconds_left)
        self.address = address
        self.seconds_left = seconds_left

    def __str__(self) -> str:
        minutes = max(1, int(self.seconds_left + 59) // 60)
        return (f"too many failed logins from {self.address}; "
                f"requests from it are refused for {minutes} more minute{'s' if minutes != 1 else ''}")


class LoginGuard:
    """
    Failed logins per client address: ``max_failures`` within ``window``
    seconds block the address for ``block_seconds``.  A success resets the
    count.

    Password checks are slow and run concurrently, so counting only finished
    failures would let a client start a thousand guesses before the first one
    is counted.  Instead an address may have at most as many checks in flight
    as it has failures left; further attempts wait their turn (and are
    refused if the address gets blocked meanwhile).
    """

    #: Beyond this many addresses with recent failures, the oldest are forgotten.
    max_tracked = 100_000

    def __init__(
        self, clock: IReactorTime, *, max_failures: int = 5, window: float = 600.0, block_seconds: float = 3600.0
    ) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.block_seconds = block_seconds
        self._failures: dict[str, deque[float]] = {}
        self._blocked: dict[str, IDelayedCall] = {}  # address -> the delayed call that releases it
        self._in_flight: dict[str, int] = {}
        self._waiting: dict[str, deque[Deferred[None]]] = {}

    # Questions.

    def is_blocked(self, address: str) -> bool:
        return address in self._blocked

    def blocked_count(self) -> int:
        """Addresses blocked now."""
        return len(self._blocked)

    def check(self, address: str) -> None:
        """Raise ``AddressBlocked`` if ``address`` is blocked now."""
        release = self._blocked.get(address)
        if release is not None:
            raise AddressBlocked(address, release.getTime() - self.clock.seconds())

    def failures(self, address: str) -> int:
        """Failed logins from ``address`` within the window."""
        recent = self._failures.get(address)
        if not recent:
            return 0
        horizon = self.clock.seconds() - self.window
        while recent and recent[0] <= horizon:
            recent.popleft()
        if not recent:
            del self._failures[address]
            return 0
        return len(recent)

    # A login attempt: ``attempt``, then exactly one of ``succeeded``,
    # ``failed`` or ``abandoned``.

    def attempt(self, address: str) -> Deferred[None]:
        """Fires when ``address`` may check a password; fails with ``AddressBlocked``."""
        try:
            self.check(address)
        except AddressBlocked:
            return fail()
        if self._room(address):
            self._in_flight[address] = self._in_flight.get(address, 0) + 1
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.setdefault(address, deque()).append(d)
        return d

    def succeeded(self, address: str) -> None:
        self._end(address)
        self.reset(address)

    def failed(self, address: str) -> None:
        self._end(address)
        if address in self._blocked:
            return
        # Re-inserted so the dict stays ordered by latest failure.
        times = self._failures.pop(address, None) or deque()
        times.append(self.clock.seconds())
        self._failures[address] = times
        count = self.failures(address)
        if count >= self.max_failures:
            self._block(address, count)
        else:
            self._forget_oldest()
            self._wake(address)

    def abandoned(self, address: str) -> None:
        """The attempt ended without a verdict (a bug, say): free its slot."""
        self._end(address)
        self._wake(address)

    def reset(self, address: str) -> None:
        """A successful login from ``address``: its count starts again."""
        self._failures.pop(address, None)
        self._wake(address)

    def stop(self) -> None:
        """Cancel the release timers (at shutdown)."""
        for call in self._blocked.values():
            if call.active():
                call.cancel()
        self._blocked.clear()

    # Inside.

    def _room(self, address: str) -> bool:
        return self._in_flight.get(address, 0) + self.failures(address) < self.max_failures

    def _end(self, address: str) -> None:
        left = self._in_flight.get(address, 0) - 1
        if left > 0:
            self._in_flight[address] = left
        else:
            self._in_flight.pop(address, None)

    def _wake(self, address: str) -> None:
        waiting = self._waiting.get(address)
        while waiting and self._room(address):
            self._in_flight[address] = self._in_flight.get(address, 0) + 1
            waiting.popleft().callback(None)
        if not waiting:
            self._waiting.pop(address, None)

    def _block(self, address: str, count: int) -> None:
        self._failures.pop(address, None)
        self._blocked[address] = self.clock.callLater(self.block_seconds, self._release, address)
        log.warn(
            "blocking {address} for {seconds:.0f} s after {count} failed logins within {window:.0f} s",
            address=address, seconds=self.block_seconds, count=count, window=self.window,
        )
        waiting = self._waiting.pop(address, deque())
        for d in waiting:
            d.errback(AddressBlocked(address, self.block_seconds))

    def _release(self, address: str) -> None:
        del self._blocked[address]
        log.info("released {address}: its block after failed logins has ended", address=address)

    def _forget_oldest(self) -> None:
        # Many addresses each failing a little (a spray) must not grow memory
        # without bound: past the cap, forget the tenth least recently seen.
        excess = len(self._failures) - self.max_tracked
        if excess <= 0:
            return
        for address in list(self._failures)[: excess + self.max_tracked // 10]:
            del self._failures[address]
