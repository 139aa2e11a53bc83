// The output view of one job: a header (id, state, times), then each
// command with its output and exit code.  Live output is appended as it
// arrives; the view follows the end unless the user scrolled up, and a
// pause button holds the text still while the job goes on.

import { bound, clock, duration, fullTime, h, setText } from "./dom.js";
import { outcome } from "./jobs.js";

const AT_BOTTOM = 24; // pixels from the end that still count as "at the end"

export class OutputView {
  constructor({ onKill, canKill }) {
    this.onKill = onKill;
    this.canKill = canKill;
    this.root = bound("detail");
    this.empty = bound("detail-empty");
    this.output = bound("output");
    this.status = bound("output-status");
    this.meta = bound("detail-meta");
    this.title = bound("detail-id");
    this.badge = bound("detail-state");
    this.pauseButton = this.root.querySelector('[data-action="pause"]');
    this.followButton = this.root.querySelector('[data-action="follow"]');
    this.killButton = this.root.querySelector('[data-action="kill"]');
    this.job = null;
    this.live = false;
    this.shownVersion = -1;
    this.rendered = [];
    this.renderedKey = "";
    this.follow = true;
    this.paused = false;
    this.held = false; // output arrived while paused
    this.scrolledAway = false; // output arrived while scrolled up

    this.output.addEventListener("scroll", () => {
      const atEnd = this.output.scrollHeight - this.output.scrollTop - this.output.clientHeight <= AT_BOTTOM;
      if (atEnd !== this.follow) {
        this.follow = atEnd;
        if (atEnd) this.scrolledAway = false;
        this.showStatus();
      }
    }, { passive: true });
    this.pauseButton.addEventListener("click", () => this.setPaused(!this.paused));
    this.followButton.addEventListener("click", () => {
      this.follow = true;
      this.scrolledAway = false;
      if (this.paused) this.setPaused(false);
      this.scrollToEnd();
      this.showStatus();
    });
    this.killButton.addEventListener("click", () => {
      if (this.job !== null) this.onKill(this.job);
    });
  }

  get jobId() {
    return this.job === null ? null : this.job.id;
  }

  // Show `job`; `live` when it is followed through events (not a history record).
  show(job, live) {
    const same = this.job !== null && job !== null && this.job.id === job.id && this.live === live;
    this.job = job;
    this.live = live;
    if (job === null) {
      this.root.hidden = true;
      this.empty.hidden = false;
      this.output.removeAttribute("data-output-for");
      this.output.replaceChildren();
      this.rendered = [];
      this.renderedKey = "";
      return;
    }
    if (!same) {
      this.follow = true;
      this.held = false;
      this.scrolledAway = false;
      this.setPaused(false, false);
      this.output.replaceChildren();
      this.rendered = [];
      this.renderedKey = "";
    }
    this.root.hidden = false;
    this.empty.hidden = true;
    this.output.dataset.outputFor = job.id;
    this.update(true);
  }

  setPaused(paused, render = true) {
    this.paused = paused;
    this.pauseButton.setAttribute("aria-pressed", String(paused));
    setText(this.pauseButton, paused ? "Resume" : "Pause");
    if (!paused && render && this.held) {
      this.held = false;
      this.renderOutput();
    }
    this.showStatus();
  }

  // The job changed (an event, a record): header always, output unless
  // paused.  Nothing to do when it did not change since last drawn.
  update(force = false) {
    const job = this.job;
    if (job === null || (!force && job.version === this.shownVersion)) return;
    this.shownVersion = job.version;
    this.renderHead();
    if (this.paused) {
      this.held = true;
      this.showStatus();
      return;
    }
    this.renderOutput();
  }

  // Once a second: the duration of a running job.
  tick() {
    if (this.job !== null && this.job.state === "running") this.renderMeta();
  }

  renderHead() {
    const job = this.job;
    setText(this.title, job.id);
    this.title.title = job.id;
    const state = job.killing ? "killing..." : job.missed ? "finished (unseen)" : outcome(job).label;
    setText(this.badge, state);
    this.badge.dataset.state = job.state;
    this.badge.dataset.outcome = job.state === "finished" ? outcome(job).key : job.killing ? "killing" : job.state;
    this.killButton.hidden = !(this.live && this.canKill() && job.active && !job.killing);
    // Still there after the job ends while paused, to resume with.
    this.pauseButton.hidden = !(this.live && (job.state === "running" || this.paused));
    this.renderMeta();
  }

  renderMeta() {
    const job = this.job;
    const rows = [];
    const add = (name, value, title) => {
      if (value === null || value === undefined || value === "") return;
      rows.push(h("div", null, h("dt", { text: name }), h("dd", { text: value, title })));
    };
    add("queue", job.position === null ? job.queue : `${job.queue} · position ${job.position}`);
    if (job.state === "pending") add("queued", clock(job.queuedAt), fullTime(job.queuedAt));
    add("started", clock(job.startedAt), fullTime(job.startedAt));
    if (job.state === "finished") add("finished", clock(job.finishedAt), fullTime(job.finishedAt));
    const end = job.state === "running" ? Date.now() : job.finishedAt;
    if (job.startedAt !== null && end !== null) add(job.state === "running" ? "running for" : "took", duration((end - job.startedAt) / 1000));
    add("by", job.submittedBy);
    if (job.killedBy) add("killed by", job.killedBy);
    // Replace only when something changed (keeps text selectable while ticking).
    const key = rows.map((r) => r.textContent).join("\n");
    if (key !== this.meta.dataset.key) {
      this.meta.dataset.key = key;
      this.meta.replaceChildren(...rows);
    }
  }

  renderOutput() {
    const job = this.job;
    const sections = job.sections();
    const key = sections.map((s) => s.command).join("\n") + "\n" + this.live;
    if (key !== this.renderedKey) {
      this.renderedKey = key;
      this.rendered = sections.map((s) => this.section(s));
      const blocks = this.rendered.map((r) => r.block);
      if (job.state === "pending") {
        blocks.unshift(h("p", { class: "out-note", text: "Waiting in its queue; output appears here when it starts." }));
      }
      this.output.replaceChildren(...blocks);
    }
    const current = job.state === "running" ? job.currentCmd : null;
    sections.forEach((s, i) => this.fill(this.rendered[i], s, s.command === current));
    if (this.follow) this.scrollToEnd();
    else this.scrolledAway = true;
    this.showStatus();
  }

  section(s) {
    const text = document.createTextNode("");
    const rc = h("span", { class: "rc" });
    const note = h("p", { class: "out-note", hidden: true });
    const block = h("div", { class: "cmd" },
      h("div", { class: "cmd-head" }, h("span", { class: "prompt", text: "$" }), h("span", { class: "cmd-text", text: s.command }), rc),
      note,
      h("pre", { class: "cmd-out" }, text));
    return { block, text, rc, note, shown: "" };
  }

  fill(r, s, running) {
    if (s.text !== r.shown) {
      if (s.text.length > r.shown.length && s.text.startsWith(r.shown)) r.text.appendData(s.text.slice(r.shown.length));
      else r.text.data = s.text;
      r.shown = s.text;
    }
    r.block.dataset.state = s.rc !== null ? (s.rc === "0" ? "ok" : "failed") : running ? "running" : "waiting";
    setText(r.rc, s.rc !== null ? `exit ${s.rc}` : running ? "running" : "");
    r.note.hidden = !s.partial;
    setText(r.note, s.partial ? "Output from before this page connected is not shown (this server does not send it for a running job)." : "");
    r.block.classList.toggle("no-output", s.text === "" && s.rc !== null);
  }

  scrollToEnd() {
    this.output.scrollTop = this.output.scrollHeight;
  }

  showStatus() {
    let text = "";
    if (this.paused) text = this.held ? "Paused · new output is waiting" : "Paused";
    else if (!this.follow) text = this.scrolledAway ? "Scrolled up · new output below" : "Scrolled up · not following";
    else if (this.job !== null && this.live && this.job.state === "running") text = "Following live output";
    setText(this.status, text);
    this.followButton.hidden = !(this.paused || !this.follow);
  }
}
