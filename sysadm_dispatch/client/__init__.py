"""
The command-line client: ``sysadm-dispatch run/follow/list/kill/logs/watch``.

It speaks only the wire protocol (docs/protocol.rst) through a small
connection object (``connection.py``), so another transport can stand
beside the WebSocket one.  What it does is documented in docs/cli.rst.
"""
