"""A logged-in, subscribed WebSocket session for the benchmarks that run jobs one by one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from _common import HOST, PASSWORD, USERNAME, BenchError
from _wsclient import WebSocketClient


class JobSession:
    """Requests with replies matched by id; the events seen meanwhile are kept for ``event``."""

    def __init__(self, client: WebSocketClient, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.number = 0
        self.stash: list[dict[str, Any]] = []
        client.on_message = lambda payload: self.queue.put_nowait(json.loads(payload))

    @classmethod
    async def open(cls, port: int, timeout: float) -> JobSession:
        session = cls(await WebSocketClient.connect(HOST, port, timeout), timeout)
        await session.call("rpc", "auth", {"username": USERNAME, "password": PASSWORD})
        await session.call("events", "subscribe", ["dispatcher"])
        return session

    async def call(self, namespace: str, name: str, args: Any) -> dict[str, Any]:
        self.number += 1
        request_id = str(self.number)
        self.client.send(json.dumps({"namespace": namespace, "name": name, "id": request_id, "args": args}))
        while True:
            message = await asyncio.wait_for(self.queue.get(), self.timeout)
            if message.get("id") == request_id:
                if message["name"] != "response":
                    raise BenchError(f"{name} failed: {message}")
                return message
            self.stash.append(message)

    async def event(self, job_id: str, state: str, timeout: float | None = None) -> dict[str, Any]:
        """The ``args`` of the next event of ``job_id`` in ``state``."""
        while True:
            if self.stash:
                message = self.stash.pop(0)
            else:
                message = await asyncio.wait_for(self.queue.get(), timeout or self.timeout)
            args = message.get("args", {})
            if message.get("namespace") == "events" and args.get("process_id") == job_id \
                    and args.get("state") == state:
                return dict(args)

    def close(self) -> None:
        self.client.close()
