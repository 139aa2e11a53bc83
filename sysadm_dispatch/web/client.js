// The dispatcher protocol over one WebSocket (docs/protocol.rst): requests
// matched to their replies by id, and events handed to a callback.

export class RpcError extends Error {
  constructor(code, message, detail) {
    super(detail || message || `error ${code}`);
    this.code = code;
    this.reason = message || "";
    this.detail = detail || "";
  }

  // One line for people: "403 Forbidden: user 'bob' has read-only access ...".
  describe() {
    if (!this.code) return this.detail || this.message;
    return `${this.code} ${this.reason}${this.detail ? ": " + this.detail : ""}`;
  }
}

// The WebSocket URL beside the page: /ws of the same origin (and path
// prefix, behind a proxy), wss when the page came over https.
export function socketUrl(location) {
  const url = new URL("ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url.href;
}

export class Connection {
  // onEvent(message) for every event; onClose(code, reason) once, when a
  // connection that had opened closes.
  constructor(url, { onEvent, onClose }) {
    this.url = url;
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.socket = null;
    this.pending = new Map();
    this.counter = 0;
    this.lastSent = 0;
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  // Resolves once open; rejects if the connection fails before that.
  connect() {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url);
      let opened = false;
      this.socket = socket;
      socket.addEventListener("open", () => {
        opened = true;
        resolve();
      });
      socket.addEventListener("message", (e) => this.received(e.data));
      socket.addEventListener("close", (e) => {
        if (this.socket === socket) this.socket = null;
        this.failAll(new RpcError(0, "", "the connection to the server closed"));
        if (opened) this.onClose(e.code, e.reason);
        else reject(new RpcError(0, "", "cannot connect to the server"));
      });
    });
  }

  close() {
    const socket = this.socket;
    this.socket = null;
    this.failAll(new RpcError(0, "", "disconnected"));
    if (socket !== null) socket.close(1000, "bye");
  }

  failAll(error) {
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const { reject } of waiting) reject(error);
  }

  received(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message === null || typeof message !== "object") return;
    const isReply = message.name === "response" || message.name === "error";
    if (!isReply) {
      if (message.namespace === "events") this.onEvent(message);
      return;
    }
    const waiter = this.pending.get(message.id);
    if (waiter === undefined) return;
    this.pending.delete(message.id);
    if (message.name === "error") {
      const a = message.args || {};
      waiter.reject(new RpcError(a.code, a.message, a.detail));
    } else {
      waiter.resolve(message.args);
    }
  }

  // One request; resolves with the reply's args, rejects with RpcError.
  call(name, args, namespace = "rpc") {
    if (!this.open) return Promise.reject(new RpcError(0, "", "not connected to the server"));
    this.counter += 1;
    const id = `ui-${this.counter}`;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.send(JSON.stringify({ namespace, name, id, args }));
      this.lastSent = Date.now();
    });
  }

  // A request the server never answers (auth_clear).
  send(name, args, namespace = "rpc") {
    if (this.open) this.socket.send(JSON.stringify({ namespace, name, id: "", args }));
  }
}
