// Building the page from data.  Everything that came from the server is
// inserted as text (textContent, text nodes, dataset): never as HTML.  The
// page's Content-Security-Policy enforces Trusted Types, so any assignment
// that would parse a string as HTML throws instead.

// h("td", {class: "c-id", dataset: {jobId: id}}, "text", child, ...)
export function h(tag, props = null, ...children) {
  const el = document.createElement(tag);
  if (props !== null) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "text") el.textContent = value;
      else if (key === "on") for (const [type, fn] of Object.entries(value)) el.addEventListener(type, fn);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Set an element's text only when it changed (cheap repeated renders).
export function setText(el, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (el.textContent !== value) el.textContent = value;
}

export function bound(name) {
  return document.querySelector(`[data-bind="${name}"]`);
}

// Seconds as "4s", "2m 05s", "3h 07m", "2d 4h".
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  const pad = (n) => String(n).padStart(2, "0");
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

// An ISO 8601 time from the server as milliseconds, or null.
export function parseTime(text) {
  if (typeof text !== "string" || text === "") return null;
  const t = Date.parse(text);
  return Number.isNaN(t) ? null : t;
}

// A time as the local clock shows it: "14:05:09" today, "Nov 28 14:05" before.
export function clock(ms) {
  if (ms === null || ms === undefined) return "";
  const d = new Date(ms);
  const now = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  if (d.toDateString() === now.toDateString()) return time;
  const day = d.toLocaleDateString([], { month: "short", day: "numeric" });
  return `${day} ${time.slice(0, 5)}`;
}

// The full local date and time, for tooltips and the detail view.
export function fullTime(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toLocaleString([], { hour12: false });
}
