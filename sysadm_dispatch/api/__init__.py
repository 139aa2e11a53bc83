"""
The requests every transport serves, and the envelope they speak.

- ``envelope``: decoding a message within its limits; reply and error shapes.
- ``table``: the handler table, ``(namespace, name[, action])`` to handler
  and role; ``rpc/query`` and the public requests are read from it.
- ``handlers/``: one module per area (auth, identify/query, dispatcher,
  logs, events), each registering its handlers.  Adding an action is one
  ``register`` call there, and a test.
- ``router``: the facade the transports (and ``make_router``) use.
"""
