"""
Hypothesis strategies and checks for fuzzing the router: arbitrary JSON,
random envelopes and random ``args`` that are near enough to real requests
to get past the first checks.  Shared by tests/integration/test_fuzz.py and
bench/fuzz_router.py.

Commands the strategies make contain no ``/`` and jobs never set ``PATH``:
with a dispatcher whose ``PATH`` is an empty directory, no generated
command can find a program to run.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from hypothesis import strategies as st

from sysadm_dispatch.api.router import RPCError, decode_json

NAMES = ["auth", "auth_token", "auth_clear", "identify", "query", "dispatcher", "subscribe", "unsubscribe",
         "response", "error"]
USERS = ["full", "reader", "nobody"]
#: Codes a reply may carry; 500 would be a bug.
CODES = {400, 401, 403, 404, 413, 503}

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _safe(text: str) -> str:
    return text.replace("/", "_")


commands = st.text(max_size=24).map(_safe) | st.sampled_from(["true", "echo hi", "sleep 1", "'unclosed", ""])
job_ids = st.text(min_size=0, max_size=12) | st.sampled_from(["a", "b", "job-1"])
chains = commands | st.lists(commands, max_size=4) | json_values
envs = st.dictionaries(st.text(max_size=6).filter(lambda k: k != "PATH"), st.text(max_size=6).map(_safe),
                       max_size=3) | json_values
job_objects = st.fixed_dictionaries(
    {},
    optional={
        "id": job_ids | json_values,
        "commands": chains,
        "queue": st.sampled_from(["no_queue", "pkg_queue", "iocage_queue", "nope_queue"]) | json_values,
        "cwd": st.sampled_from([".", "", "nowhere"]) | json_values,
        "env": envs,
        "timeout": st.floats(allow_nan=False) | st.integers() | json_values,
    },
)
run_args = st.one_of(
    st.dictionaries(job_ids.filter(lambda k: k != "action"), chains, max_size=4).map(
        lambda d: {"action": "run", **d}),
    st.lists(job_objects, max_size=4).map(lambda jobs: {"action": "run", "jobs": jobs}),
    st.fixed_dictionaries({"action": st.just("run"), "jobs": json_values}),
)
#: Runs that should be accepted (unless an id is taken, or the user may not run).
plain_ids = st.text(alphabet="abcxyz-_0123456789", min_size=1, max_size=6)
safe_commands = st.sampled_from(["true", "echo hi", "sleep 1", "printf x"])
good_run_args = st.one_of(
    st.dictionaries(plain_ids.filter(lambda k: k != "action"), safe_commands | st.lists(safe_commands, min_size=1,
                                                                                          max_size=3),
                    min_size=1, max_size=3).map(lambda d: {"action": "run", **d}),
    st.lists(st.fixed_dictionaries({"commands": safe_commands},
                                   optional={"id": plain_ids, "queue": st.sampled_from(["no_queue", "pkg_queue"]),
                                             "env": st.just({"LANG": "C"}), "timeout": st.just(60)}),
             min_size=1, max_size=3).map(lambda jobs: {"action": "run", "jobs": jobs}),
)
kill_args = st.fixed_dictionaries({"action": st.just("kill")},
                                  optional={"job_id": job_ids | plain_ids | st.lists(job_ids | plain_ids, max_size=3)
                                            | json_values})
dispatcher_args = (st.just({"action": "list"}) | run_args | kill_args
                   | st.dictionaries(st.just("action"), json_values) | json_values)
auth_args = st.fixed_dictionaries({}, optional={"username": st.sampled_from(USERS) | json_values,
                                                "password": st.sampled_from(["pw", "wrong"]) | json_values})
event_args = st.sampled_from(["dispatcher", ["dispatcher"], "nothing"]) | json_values
any_args = dispatcher_args | auth_args | event_args | st.fixed_dictionaries({"token": st.text(max_size=8)})

ids = st.text(max_size=10)


def _request(namespace: str, name: str, args: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"namespace": st.just(namespace), "name": st.just(name), "id": ids, "args": args})


#: Requests that name a real call, with args made for it (and sometimes any args).
requests = st.one_of(
    _request("rpc", "dispatcher", dispatcher_args),
    _request("rpc", "dispatcher", dispatcher_args),
    _request("rpc", "dispatcher", run_args),
    _request("rpc", "dispatcher", good_run_args),
    _request("rpc", "dispatcher", good_run_args),
    _request("rpc", "dispatcher", kill_args),
    _request("rpc", "auth", auth_args),
    _request("rpc", "auth_token", st.fixed_dictionaries({"token": st.text(max_size=8)}) | json_values),
    _request("rpc", "auth_clear", json_values),
    _request("rpc", "identify", json_values),
    _request("rpc", "query", json_values),
    _request("events", "subscribe", event_args),
    _request("events", "unsubscribe", event_args),
    st.builds(lambda ns, name, args: {"namespace": ns, "name": name, "id": "x", "args": args},
              st.sampled_from(["rpc", "events"]), st.sampled_from(NAMES), any_args),
)
#: Envelopes with any field missing, of any type, or extra.
mangled = st.fixed_dictionaries(
    {},
    optional={
        "namespace": st.sampled_from(["rpc", "events"]) | json_values,
        "name": st.sampled_from(NAMES) | json_values,
        "id": ids | json_values,
        "args": any_args,
        "extra": json_values,
    },
)
#: One message: mostly envelopes, some arbitrary JSON, some bytes that may not even be UTF-8.
messages = st.one_of(
    requests.map(lambda e: json.dumps(e).encode()),
    requests.map(lambda e: json.dumps(e).encode()),
    requests.map(lambda e: json.dumps(e).encode()),
    requests.map(lambda e: json.dumps(e).encode()),
    mangled.map(lambda e: json.dumps(e).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
)
batches = st.lists(messages, min_size=1, max_size=6)


def expectation(data: bytes, max_bytes: int, max_depth: int = 32, max_string: int = 65536) -> tuple[bool, Any]:
    """
    ``(replies, message)``: whether ``data`` must be answered (everything
    but a readable ``auth_clear`` is), and the message as the server reads
    it (None if it cannot be read).
    """
    if len(data) > max_bytes:
        return True, None
    try:
        message = decode_json(data, max_depth, max_string)
    except RPCError:
        return True, None
    is_clear = (isinstance(message, dict) and message.get("namespace") == "rpc"
                and message.get("name") == "auth_clear")
    return not is_clear, message


def check_envelope(reply: Any, message: Any) -> None:
    """``reply`` is a valid reply envelope to ``message`` (as read; None if unreadable), and not a 500."""
    assert isinstance(reply, dict), reply
    assert set(reply) == {"namespace", "name", "id", "args"}, reply
    json.dumps(reply, allow_nan=False)
    assert reply["name"] in ("response", "error"), reply
    assert isinstance(reply["id"], str), reply
    namespace = message.get("namespace") if isinstance(message, dict) else None
    assert reply["namespace"] == (namespace if namespace in ("rpc", "events") else "rpc"), (reply, message)
    if isinstance(message, dict) and isinstance(message.get("id"), str):
        assert reply["id"] == message["id"], (reply, message)
    if reply["name"] == "error":
        args = reply["args"]
        assert set(args) == {"code", "message", "detail"}, reply
        assert args["code"] in CODES, reply
        assert args["message"] == HTTPStatus(args["code"]).phrase, reply
        assert isinstance(args["detail"], str) and args["detail"], reply
        assert "Traceback" not in args["detail"], reply
