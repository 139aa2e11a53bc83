"""REST, WebSocket, WAMP and the dashboard: translating the wire to the api."""
