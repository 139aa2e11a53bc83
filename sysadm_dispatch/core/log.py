"""
The output of one command, kept up to a cap: what a job's logs are made of.
"""

from __future__ import annotations

from collections import deque


class CappedLog:
    """
    The output of one command, capped: the first and last halves of the cap
    are kept, with a marker saying how many bytes were dropped between them.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0
        self._head = bytearray()
        self._head_cap = cap // 2
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._tail_cap = cap - self._head_cap
        #: Whether the last ``since`` stopped short of the end for its limit.
        self.short = False

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data or self._tail_cap <= 0:
            return
        if len(data) >= self._tail_cap:
            self._tail.clear()
            data = bytes(data[-self._tail_cap :])
            self._tail_size = 0
        self._tail.append(bytes(data))
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= self._tail_cap:
            self._tail_size -= len(self._tail.popleft())

    @property
    def dropped(self) -> int:
        kept_tail = min(self._tail_size, self._tail_cap)
        return self.total - len(self._head) - kept_tail

    def _tail_bytes(self) -> bytes:
        return b"".join(self._tail)[-self._tail_cap :] if self._tail_cap > 0 else b""

    def getvalue(self) -> bytes:
        # Joined in one copy, not one per part: a log is up to the cap.
        tail: list[bytes | bytearray] = list(self._tail)
        excess = self._tail_size - self._tail_cap
        if tail and excess > 0:
            tail[0] = tail[0][excess:]
        if self.dropped:
            return b"".join((self._head, _marker(self.dropped), *tail))
        return b"".join((self._head, *tail))

    def since(self, offset: int, final: bool = False, limit: int | None = None) -> tuple[bytes, int]:
        """
        The output from byte ``offset`` on, at most ``limit`` bytes of it, as
        far as it is kept (a marker stands for what the cap dropped), and the
        offset to continue from.  Unless ``final`` and all of it is taken,
        an incomplete UTF-8 sequence at the end is held back for next time.
        """
        total = self.total
        self.short = False
        if offset >= total:
            return b"", total
        # What the cap dropped is one marker and does not count in ``limit``.
        budget = total if limit is None else max(limit, 4)  # at least room for one character
        head_len = len(self._head)
        tail_start = total - min(self._tail_size, self._tail_cap)
        parts = []
        if offset < head_len:
            take = min(head_len - offset, budget)
            parts.append(bytes(self._head[offset : offset + take]))
            offset += take
            budget -= take
        if head_len <= offset < tail_start:
            parts.append(_marker(tail_start - offset))
            offset = tail_start
        if offset < total and budget > 0:
            take = min(total - offset, budget)
            parts.append(self._tail_bytes()[offset - tail_start : offset - tail_start + take])
            offset += take
        data = b"".join(parts)
        self.short = offset < total
        if not final or self.short:
            held = _incomplete_utf8_suffix(data)
            if held:
                return data[:-held], offset - held
        return data, offset

    def text(self) -> str:
        return self.getvalue().decode("utf-8", "replace")

    def until(self, end: int) -> bytes:
        """The output before byte ``end``, as far as it is kept (a marker stands for what the cap dropped)."""
        end = min(end, self.total)
        head_len = len(self._head)
        if end <= head_len:
            return bytes(self._head[:end])
        tail_start = self.total - min(self._tail_size, self._tail_cap)
        parts = [bytes(self._head)]
        if tail_start > head_len:
            parts.append(_marker(min(end, tail_start) - head_len))
        if end > tail_start:
            parts.append(self._tail_bytes()[: end - tail_start])
        return b"".join(parts)


def _marker(dropped: int) -> bytes:
    return f"\n[sysadm-dispatch: {dropped} bytes of output dropped here]\n".encode()


def _incomplete_utf8_suffix(data: bytes) -> int:
    """How many bytes at the end of ``data`` begin a UTF-8 character not yet complete."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return back if need > back else 0
    return 0
