"""
REST, WebSocket, WAMP and the dashboard: translating the wire to the api.

- ``rest`` (the Klein app), ``rest_site`` (counted connections, bounded
  bodies), ``rest_screen`` (refusing a request from its headers);
- ``websocket`` (a connection's session and the factory), ``bounded``
  (message size while frames arrive), ``outbox`` (slow clients);
- ``wamp`` (a host of a fleet), ``dashboard`` (the page), ``limits``
  (per-address counts, timers, calm accepts).
"""
