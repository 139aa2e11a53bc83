"""Giving memory back after large frees (``sysadm_dispatch.core.memory``), driven by a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from sysadm_dispatch.core.memory import TRIM_AFTER_BYTES, Trimmer, _malloc_trim


def make() -> tuple[Clock, Trimmer, list[int]]:
    clock = Clock()
    calls: list[int] = []
    trimmer = Trimmer(clock, threshold=100, delay=1.0, max_delay=10.0,
                      trim=lambda pad: calls.append(pad) or 1, in_thread=False)
    return clock, trimmer, calls


def test_trims_once_a_burst_past_the_threshold_is_over() -> None:
    clock, trimmer, calls = make()
    trimmer.released(60)
    clock.advance(5)
    assert calls == []  # below the threshold: nothing to give back
    trimmer.released(60)
    clock.advance(0.5)
    trimmer.released(10)  # still going: later
    clock.advance(0.9)
    assert calls == []
    clock.advance(0.1)
    assert calls == [0]
    clock.advance(5)
    assert calls == [0]
    trimmer.released(99)
    clock.advance(5)
    assert calls == [0]  # counted from the last trim


def test_a_burst_that_never_ends_is_trimmed_at_the_latest_after_the_longest_delay() -> None:
    clock, trimmer, calls = make()
    for _ in range(100):
        trimmer.released(200)
        clock.advance(0.5)
    assert len(calls) >= 4  # one per 10 s at least


def test_stop_cancels_a_pending_trim() -> None:
    clock, trimmer, calls = make()
    trimmer.released(500)
    trimmer.stop()
    clock.advance(10)
    assert calls == [] and clock.getDelayedCalls() == []


def test_the_c_library_has_it_here_and_the_threshold_is_a_few_mib() -> None:
    assert _malloc_trim() is not None  # glibc: the servers this runs on
    assert TRIM_AFTER_BYTES == 16 << 20
