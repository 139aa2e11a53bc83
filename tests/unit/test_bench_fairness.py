"""
The bare servers the benchmarks compare ours with do the same work by the
cheapest path their framework offers (docs/benchmarks.rst): each message is
framed once and written straight to the connection, and a broadcast turn's
frames go to each subscriber in one write, as ours sends its events.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from conftest import REPO
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

sys.path.insert(0, os.path.join(REPO, "bench"))
import bare_broadcast
import bare_servers

from sysadm_dispatch.transports.websocket import text_frame


def forbid_send_message(protocol: Any) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("sendMessage: the per-message path, not the cheapest")

    protocol.sendMessage = refuse


def test_bare_request_reply_writes_one_prebuilt_frame() -> None:
    factory = bare_servers.autobahn_factory('{"id": ', ', "args": {}}')
    protocol = factory.buildProtocol(None)
    protocol.transport = StringTransport()
    forbid_send_message(protocol)
    protocol.onMessage(b'{"id": "7"}', False)
    assert protocol.transport.value() == text_frame(b'{"id": "7", "args": {}}')


@pytest.mark.parametrize("count", [1, 3])
def test_bare_broadcast_writes_a_turn_s_frames_to_each_subscriber_at_once(count: int) -> None:
    clock = Clock()
    factory = bare_broadcast.BroadcastFactory(clock, batch=16)
    subscribers = []
    for _ in range(count):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        writes: list[bytes] = []
        transport.write = writes.append  # type: ignore[method-assign]
        protocol.transport = transport
        forbid_send_message(protocol)
        protocol.sendPreparedMessage = protocol.sendMessage
        factory.subscribers[id(protocol)] = protocol
        subscribers.append(writes)
    factory.messages = [f'{{"n": {i}}}'.encode() for i in range(20)]
    factory.broadcast_kept()
    expected_first = b"".join(text_frame(m) for m in factory.messages[:16])
    assert all(writes == [expected_first] for writes in subscribers)
    clock.advance(0)
    expected_rest = b"".join(text_frame(m) for m in factory.messages[16:])
    assert all(writes == [expected_first, expected_rest] for writes in subscribers)
