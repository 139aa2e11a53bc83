// The history view: finished jobs from `rpc/logs` `read_logs` over a chosen
// time range, newest first, filtered by outcome and text; a click opens the
// record in the output view.

import { bound, clock, duration, fullTime, h, setText } from "./dom.js";
import { Job, outcome } from "./jobs.js";

const LIMIT = 1000;

export class HistoryView {
  constructor({ request, onOpen, isSelected }) {
    this.request = request;
    this.onOpen = onOpen;
    this.isSelected = isSelected;
    this.form = document.querySelector("form.history-query");
    this.rows = document.querySelector('[data-list="history"]');
    this.error = bound("history-error");
    this.empty = bound("history-empty");
    this.note = bound("history-note");
    this.jobs = [];
    this.truncated = false;
    this.loaded = false;
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.load();
    });
    this.form.elements.range.addEventListener("change", () => {
      this.showCustom();
      if (this.form.elements.range.value !== "custom") this.load();
    });
    this.form.elements.outcome.addEventListener("change", () => this.render());
    this.form.elements.filter.addEventListener("input", () => this.render());
    this.showCustom();
  }

  showCustom() {
    const custom = this.form.elements.range.value === "custom";
    this.form.classList.toggle("custom", custom);
    if (custom && !this.form.elements.from.value) {
      const local = (ms) => {
        const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
        return d.toISOString().slice(0, 19);
      };
      this.form.elements.from.value = local(Date.now() - 86400000);
      this.form.elements.to.value = local(Date.now());
    }
  }

  // The range asked for, in seconds since the epoch, or an error message.
  range() {
    const f = this.form.elements;
    const now = Date.now() / 1000;
    if (f.range.value !== "custom") return { start: now - Number(f.range.value), end: now };
    const start = Date.parse(f.from.value) / 1000;
    const end = f.to.value ? Date.parse(f.to.value) / 1000 : now;
    if (!Number.isFinite(start)) return { error: "Choose the start of the range." };
    if (!Number.isFinite(end)) return { error: "The end of the range is not a date." };
    if (start > end) return { error: "The start of the range is after its end." };
    return { start, end };
  }

  // After logging out: nothing of the last user's is kept.
  reset() {
    this.jobs = [];
    this.truncated = false;
    this.loaded = false;
    setText(this.error, "");
    this.render();
  }

  firstShow() {
    if (!this.loaded) this.load();
  }

  async load() {
    const range = this.range();
    setText(this.error, range.error ?? "");
    if (range.error) return;
    this.loaded = true;
    this.form.classList.add("busy");
    try {
      const reply = await this.request("logs", {
        action: "read_logs", logs: "dispatcher", time_format: "time_t_seconds",
        start_time: Math.floor(range.start), end_time: Math.ceil(range.end), limit: LIMIT,
      });
      const records = reply && typeof reply.dispatcher === "object" && reply.dispatcher !== null ? reply.dispatcher : {};
      this.jobs = Object.values(records).filter((r) => r && typeof r === "object").map((r) => Job.fromRecord(r));
      this.truncated = reply?.truncated === true;
      this.render();
    } catch (e) {
      setText(this.error, `Cannot read the history: ${e.describe ? e.describe() : e}`);
    } finally {
      this.form.classList.remove("busy");
    }
  }

  matches(job) {
    const wanted = this.form.elements.outcome.value;
    if (wanted !== "all" && outcome(job).key !== wanted) return false;
    const text = this.form.elements.filter.value.trim().toLowerCase();
    if (!text) return true;
    return job.id.toLowerCase().includes(text) || job.commands.some((c) => c.toLowerCase().includes(text));
  }

  render() {
    const shown = this.jobs.filter((j) => this.matches(j));
    this.rows.replaceChildren(...shown.map((job) => this.row(job)));
    this.empty.hidden = shown.length > 0;
    setText(this.empty, this.jobs.length ? "No finished job in this range matches the filter." : "No finished jobs in this range.");
    let note = "";
    if (this.jobs.length) note = `${shown.length} of ${this.jobs.length} finished jobs, newest first.`;
    if (this.truncated) note += ` Only the newest ${LIMIT} of this range are here: narrow the range to see older ones.`;
    setText(this.note, note);
    this.mark();
  }

  row(job) {
    const o = outcome(job);
    const took = job.startedAt !== null && job.finishedAt !== null ? duration((job.finishedAt - job.startedAt) / 1000) : "";
    const tr = h("tr", { class: "row", dataset: { jobId: job.id, state: "finished", outcome: o.key }, tabindex: 0 },
      h("td", { class: "c-state" }, h("span", { class: "dot" }), h("span", { class: "state-text", text: o.label })),
      h("td", { class: "c-id", text: job.id, title: job.id }),
      h("td", { class: "c-queue", text: job.queue }),
      h("td", { class: "c-cmd", text: job.commands.join(" ; "), title: job.commands.join("\n") }),
      h("td", { class: "c-start", text: clock(job.finishedAt), title: fullTime(job.finishedAt) }),
      h("td", { class: "c-dur", text: took }));
    tr.addEventListener("click", () => this.onOpen(job));
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter") this.onOpen(job);
    });
    tr.job = job;
    return tr;
  }

  // Highlight the row whose record is open.
  mark() {
    for (const tr of this.rows.children) tr.classList.toggle("selected", this.isSelected(tr.job));
  }
}
