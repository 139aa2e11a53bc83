// The run form (users with the `full` role): one job in the extended `run`
// form of docs/protocol.rst; the server's refusal is shown in the form.

import { bound, h, setText } from "./dom.js";

// The form's fields as a job object for `run`, or {error} naming the field.
export function jobFromForm(f) {
  const job = {};
  const id = f.id.value.trim();
  if (id) job.id = id;
  job.queue = f.queue.value.trim() || "no_queue";
  const commands = f.commands.value.split("\n").map((line) => line.trim()).filter((line) => line !== "");
  if (!commands.length) return { error: "Commands: write at least one command (one per line)." };
  job.commands = commands;
  const cwd = f.cwd.value.trim();
  if (cwd) job.cwd = cwd;
  const env = {};
  let n = 0;
  for (const line of f.env.value.split("\n")) {
    n += 1;
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at <= 0) return { error: `Environment, line ${n}: expected NAME=value.` };
    env[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  if (Object.keys(env).length) job.env = env;
  const timeout = f.timeout.value.trim();
  if (timeout) {
    const seconds = Number(timeout);
    if (!Number.isFinite(seconds) || seconds <= 0) return { error: "Timeout: a number of seconds above 0, or empty for none." };
    job.timeout = seconds;
  }
  return { job };
}

export class RunForm {
  constructor({ request, onStarted }) {
    this.request = request;
    this.onStarted = onStarted;
    this.form = document.querySelector("form.run-form");
    this.error = bound("run-error");
    this.ok = bound("run-ok");
    this.queues = document.getElementById("queue-names");
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
  }

  reset() {
    this.form.reset();
    setText(this.error, "");
    setText(this.ok, "");
  }

  // Suggestions for the queue field: the queues seen so far.
  setQueues(names) {
    const options = [...names].sort().map((name) => h("option", { value: name }));
    this.queues.replaceChildren(...options);
  }

  async submit() {
    const f = this.form.elements;
    setText(this.ok, "");
    const { job, error } = jobFromForm(f);
    setText(this.error, error ?? "");
    if (error) return;
    const button = this.form.querySelector('[data-action="run"]');
    button.disabled = true;
    try {
      const reply = await this.request("dispatcher", { action: "run", jobs: [job] });
      const started = Array.isArray(reply?.started) ? reply.started : [];
      setText(this.ok, started.length ? `Started ${started.join(", ")}.` : "Started.");
      f.id.value = "";
      if (started.length) this.onStarted(started[0]);
    } catch (e) {
      setText(this.error, e.describe ? e.describe() : String(e));
    } finally {
      button.disabled = false;
    }
  }
}
