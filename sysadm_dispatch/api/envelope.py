"""
The envelope: JSON messages in, reply envelopes out.

Decoding refuses what no handler should see (bad UTF-8, bad JSON, too deep
a nesting, too long a string, a lone surrogate, a key given twice) with an
``RPCError(400)`` naming the field; ``reply`` and ``error_reply`` shape the
answers.  The wire protocol is described in docs/protocol.rst.
"""

from __future__ import annotations

import json
import re
import threading
from http import HTTPStatus
from typing import Any

MAX_DEPTH = 32
MAX_STRING_CHARS = 65536


class RPCError(Exception):
    """An error reply: an HTTP-style code and one sentence saying what was wrong."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    @property
    def message(self) -> str:
        return HTTPStatus(self.code).phrase



def _not_text(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (so cannot be encoded as UTF-8), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _path(trail: tuple[Any, ...]) -> str:
    """``("args", "jobs", 0, "env")`` as ``args.jobs[0].env``."""
    out = ""
    for step in trail:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            shown = step[:64] if _not_text(step) is None else ascii(step[:64])
            out += f".{shown}" if out else shown
    return out or "the message"


def _check_shape(value: Any, max_depth: int, max_string: int | None) -> None:
    """
    Raise ``RPCError(400)`` naming the field if ``value`` nests deeper than
    ``max_depth``, holds a longer string, a string that is not Unicode text
    (a lone surrogate), or an object with a key given twice.
    """
    if _faulty(value, max_depth, max_string):
        _report(value, max_depth, max_string)


def _faulty(value: Any, max_depth: int, max_string: int | None) -> bool:
    """Whether ``_report`` will find something: a quick walk, that keeps no paths."""
    limit = max_string if max_string is not None else -1
    stack = [(value, 1)]
    while stack:  # iteratively: no recursion on hostile input
        item, depth = stack.pop()
        if depth > max_depth:
            return True
        if isinstance(item, dict):
            if isinstance(item, _Repeated):
                return True
            for key in item:
                if (limit >= 0 and len(key) > limit) or (not key.isascii() and _not_text(key) is not None):
                    return True
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and (
            (limit >= 0 and len(item) > limit) or (not item.isascii() and _not_text(item) is not None)
        ):
            return True
    return False


def _report(value: Any, max_depth: int, max_string: int | None, text: bool = True) -> None:
    """Raise the ``RPCError(400)`` for what ``_faulty`` found, naming where it is."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 1, ())]
    while stack:  # iteratively: no recursion on hostile input
        item, depth, trail = stack.pop()
        if depth > max_depth:
            raise RPCError(400, f"the message nests deeper than {max_depth} levels")
        if isinstance(item, dict):
            if isinstance(item, _Repeated):
                raise RPCError(400, f"{_path(trail)}: the key {_shown(item.repeated)} is given twice in one object")
            for key in item:
                _check_string(key, max_string, text, trail, key=True)
            stack.extend((v, depth + 1, (*trail, k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, depth + 1, (*trail, i)) for i, v in enumerate(item))
        elif isinstance(item, str):
            _check_string(item, max_string, text, trail)


def _shown(key: str) -> str:
    return repr(key[:64]) if _not_text(key) is None else ascii(key[:64])


def _check_string(value: str, limit: int | None, text: bool, trail: tuple[Any, ...], key: bool = False) -> None:
    where = f"a key of {_path(trail)}" if key else _path(trail)
    if limit is not None and len(value) > limit:
        raise RPCError(400, f"{where}: a string of {len(value)} characters, more than the limit of {limit}")
    if text:
        at = _not_text(value)
        if at is not None:
            raise RPCError(400, f"{where}: the string is not valid Unicode text (a lone surrogate "
                                f"{ascii(value[at])[1:-1]} at character {at})")


class _Repeated(dict[str, Any]):
    """An object in which a key was given twice: refused by ``_check_shape``."""

    repeated = ""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        obj = _Repeated(obj)
        obj.repeated = repeated
        _flags.repeated = True
    return obj


#: What a parse noticed that needs the walk of ``_check_shape`` to report.
_flags = threading.local()
#: A JSON escape that may stand for a lone surrogate (valid UTF-8 text holds
#: none, so only an escape can make one).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_object)


def parse_json(data: bytes, max_depth: int = MAX_DEPTH, max_string: int | None = MAX_STRING_CHARS) -> tuple[Any, bool]:
    """
    Parse a UTF-8 JSON message without judging its contents; raises
    ``RPCError(400)`` saying why not.  Returns the value and whether
    ``check_message`` must look at it: only if the text could hold a
    string or a nesting over the limits, a lone surrogate or a repeated key
    (counting brackets and looking for escapes is much cheaper than a walk).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RPCError(400, f"the message is not valid UTF-8 (byte {e.start})") from None
    _flags.repeated = False
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise RPCError(400, f"the message nests deeper than {max_depth} levels") from None
    except ValueError as e:
        raise RPCError(400, f"the message is not valid JSON ({e})") from None
    suspect = (
        _flags.repeated
        or (max_string is not None and len(text) > max_string)
        or text.count("{") + text.count("[") >= max_depth
        or _SURROGATE_ESCAPE.search(text) is not None
    )
    return value, bool(suspect)


def check_message(value: Any, suspect: bool, max_depth: int = MAX_DEPTH,
                  max_string: int | None = MAX_STRING_CHARS) -> None:
    """
    Raise ``RPCError(400)`` naming the field if a parsed message nests too
    deeply, holds too long a string, text that is not Unicode or a key
    given twice; ``suspect`` is what ``parse_json`` said.
    """
    if suspect:
        _check_shape(value, max_depth, max_string)


def decode_json(data: bytes, max_depth: int = MAX_DEPTH, max_string: int | None = MAX_STRING_CHARS) -> Any:
    """Parse and check a UTF-8 JSON message; raises ``RPCError(400)`` saying why not."""
    value, suspect = parse_json(data, max_depth, max_string)
    check_message(value, suspect, max_depth, max_string)
    return value



def reply(namespace: str, request_id: str, args: Any) -> dict[str, Any]:
    return {"namespace": namespace, "name": "response", "id": request_id, "args": args}


def error_reply(namespace: str, request_id: str, e: RPCError) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "name": "error",
        "id": request_id,
        "args": {"code": e.code, "message": e.message, "detail": e.detail},
    }




def echo_of(message: Any, max_string: int = MAX_STRING_CHARS) -> tuple[str, str]:
    """The namespace and id a reply to ``message`` carries, as far as they can be read from it."""
    if not isinstance(message, dict):
        return "rpc", ""
    namespace = message.get("namespace")
    request_id = message.get("id", "")
    if isinstance(message, _Repeated) and message.repeated == "id":
        request_id = ""  # which one?
    elif isinstance(request_id, int | float) and not isinstance(request_id, bool):
        request_id = json.dumps(request_id)[:256]
    elif not isinstance(request_id, str) or len(request_id) > max_string:
        request_id = ""
    elif _not_text(request_id) is not None:
        request_id = ""
    return echo_namespace(namespace), request_id


def echo_namespace(namespace: Any) -> str:
    """The namespace a reply carries: the request's, when it is one of the protocol's."""
    return namespace if namespace in ("rpc", "events") else "rpc"


def require_text(what: str, **fields: str) -> None:
    """For callers that bypass ``decode_json`` (which refuses such strings anywhere in a message)."""
    for name, value in fields.items():
        if _not_text(value) is not None:
            raise RPCError(400, f"{what}: {name} is not valid Unicode text (it holds a lone surrogate)")

