// What the page knows about jobs: built from the dispatcher's `list` reply
// and its events (docs/protocol.rst, "Events"), and from `rpc/logs` records.

import { parseTime } from "./dom.js";

const RC = "return_codes/";

// The commands of a chain, each once (a command repeated in a chain shares
// its log and exit code on the wire).
function unique(commands) {
  return [...new Set(Array.isArray(commands) ? commands.filter((c) => typeof c === "string") : [])];
}

// The process details inside a record or event args: `process_details` when
// there is one, else the flat keys of the original's log records.
export function detailsOf(record) {
  if (record && typeof record.process_details === "object" && record.process_details !== null) {
    return record.process_details;
  }
  return record || {};
}

// How a finished job ended: {key, label}; key is one of ok, failed, killed,
// timed-out, interrupted, unknown (the history filter uses the same keys).
export function outcome(job) {
  if (job.state !== "finished") return { key: job.state, label: job.state };
  const signal = job.signal ? ` · ${job.signal}` : "";
  if (job.timedOut) return { key: "timed-out", label: `timed out${signal}` };
  if (job.killed) return { key: "killed", label: `killed${signal}` };
  if (job.interrupted) return { key: "interrupted", label: "interrupted" };
  if (job.success === true) return { key: "ok", label: "ok" };
  if (job.success === false) {
    const failed = job.commands.map((c) => job.codes.get(c)).find((rc) => rc !== undefined && rc !== "0");
    if (failed !== undefined) return { key: "failed", label: `failed · exit ${failed}` };
    if (signal) return { key: "failed", label: `failed${signal}` };
    return { key: "failed", label: "failed" };
  }
  return { key: "unknown", label: "finished" };
}

export class Job {
  constructor(id) {
    this.id = id;
    this.queue = "";
    this.commands = [];
    this.state = "pending";
    this.position = null;
    this.queuedAt = null;
    this.startedAt = null;
    this.finishedAt = null;
    this.currentCmd = null;
    // Output gathered from `running` events: each command's text so far.
    this.outputs = new Map();
    this.codes = new Map();
    // Commands up to this index may have had output before this page saw
    // the job (-1: the page has seen the job from its start).
    this.partialUpTo = -1;
    // The `finished` event's whole logs, or a record from rpc/logs.
    this.final = null;
    this.record = null;
    this.recordMissing = false;
    this.success = null;
    this.killed = false;
    this.timedOut = false;
    this.interrupted = false;
    this.signal = null;
    this.submittedBy = null;
    this.killedBy = null;
    this.killing = false;
    // Finished while the page was not connected: no finished event seen.
    this.missed = false;
    this.dismissed = false;
    this.lastEventAt = 0;
    this.version = 0;
  }

  // A job from a stored record (history, or rpc/logs `job`).
  static fromRecord(record) {
    const job = new Job(String(record.process_id ?? ""));
    job.applyRecord(record);
    return job;
  }

  applyRecord(record) {
    const d = detailsOf(record);
    this.record = record;
    this.queue = typeof record.queue === "string" ? record.queue : this.queue;
    const commands = unique(d.cmd_list ?? record.cmd_list);
    if (commands.length) this.commands = commands;
    const state = record.state ?? d.state;
    if (state === "pending" || state === "running" || state === "finished") this.state = state;
    this.startedAt = parseTime(d.time_started ?? record.time_started) ?? this.startedAt;
    this.finishedAt = parseTime(d.time_finished ?? record.time_finished) ?? this.finishedAt;
    if (this.state === "running" && typeof d.current_cmd === "string") this.currentCmd = d.current_cmd;
    if (this.state === "finished") {
      this.final = d;
      this.currentCmd = null;
      this.applyOutcome(record);
    }
    for (const command of this.commands) {
      const rc = d[RC + command];
      if (rc !== undefined && rc !== null) this.codes.set(command, String(rc));
    }
    this.version += 1;
  }

  applyOutcome(args) {
    this.success = args.success === "true" || args.success === true ? true
      : args.success === "false" || args.success === false ? false : null;
    this.killed = args.killed === true;
    this.timedOut = args.timed_out === true;
    this.interrupted = args.interrupted === true;
    this.signal = typeof args.signal === "string" ? args.signal : null;
    if (typeof args.submitted_by === "string") this.submittedBy = args.submitted_by;
    this.killedBy = typeof args.killed_by === "string" ? args.killed_by : null;
  }

  get active() {
    return this.state === "pending" || this.state === "running";
  }

  // What the output view shows: [{command, text, rc, partial}] in order.
  sections() {
    const fromRecord = this.record !== null ? detailsOf(this.record) : null;
    return this.commands.map((command, index) => {
      let text;
      let partial = false;
      if (this.final !== null) {
        text = this.final[command];
      } else {
        const seen = this.outputs.get(command);
        const stored = fromRecord?.[command];
        if (index > this.partialUpTo) {
          // Both are the start of the same log: the longer one has more.
          text = (stored?.length ?? 0) > (seen?.length ?? 0) ? stored : seen;
        } else if (typeof stored === "string") {
          text = stored;
        } else {
          text = seen;
          partial = seen !== undefined || this.state === "running";
        }
      }
      const rc = this.final?.[RC + command] ?? this.codes.get(command);
      return {
        command,
        text: typeof text === "string" ? text : "",
        rc: rc === undefined || rc === null ? null : String(rc),
        partial,
      };
    });
  }

  // Whether the output view needs a fresh rpc/logs record to be whole.
  needsRecord() {
    return this.state === "running" && this.partialUpTo >= 0 && !this.recordMissing;
  }
}

export class JobBook {
  constructor() {
    this.jobs = new Map();
  }

  get(id) {
    return this.jobs.get(id);
  }

  // A fresh job for a new run of `id` (or the first), replacing a finished one.
  fresh(id, partialUpTo) {
    const job = new Job(id);
    job.partialUpTo = partialUpTo;
    this.jobs.set(id, job);
    return job;
  }

  // One dispatcher event's args; returns the job it changed.
  event(args, now) {
    const id = args.process_id;
    if (typeof id !== "string") return null;
    const d = detailsOf(args);
    const state = args.state;
    let job = this.jobs.get(id);
    const hasOutput = unique(d.cmd_list).some((c) => typeof d[c] === "string" || d[RC + c] !== undefined);
    if (state === "pending") {
      if (job === undefined || job.state === "finished") job = this.fresh(id, -1);
    } else if (state === "running") {
      if (job === undefined || job.state === "finished") {
        // A `running` event without output is the job's start.
        const current = unique(d.cmd_list).indexOf(d.current_cmd);
        job = this.fresh(id, hasOutput ? Math.max(current, 0) : -1);
      }
    } else if (state === "finished") {
      if (job === undefined) job = this.fresh(id, Number.MAX_SAFE_INTEGER);
    } else {
      return null;
    }
    job.state = state;
    job.lastEventAt = now;
    job.missed = false;
    if (typeof args.queue === "string") job.queue = args.queue;
    const commands = unique(d.cmd_list);
    if (commands.length) job.commands = commands;
    if (job.queuedAt === null) job.queuedAt = now;
    job.startedAt = parseTime(d.time_started) ?? job.startedAt;
    if (state === "running") {
      job.position = job.position === null ? null : "0";
      job.currentCmd = typeof d.current_cmd === "string" ? d.current_cmd : job.currentCmd;
      for (const command of job.commands) {
        if (typeof d[command] === "string") job.outputs.set(command, (job.outputs.get(command) ?? "") + d[command]);
        if (d[RC + command] !== undefined) job.codes.set(command, String(d[RC + command]));
      }
    } else if (state === "finished") {
      job.finishedAt = parseTime(d.time_finished) ?? now;
      job.currentCmd = null;
      job.position = null;
      job.final = d;
      job.killing = false;
      job.applyOutcome(args);
      for (const command of job.commands) {
        if (d[RC + command] !== undefined) job.codes.set(command, String(d[RC + command]));
      }
    }
    job.version += 1;
    return job;
  }

  // The `list` reply, asked for at `askedAt`: positions and times for the
  // active jobs; an active job no longer listed has finished unseen.
  list(byQueue, askedAt) {
    const listed = new Set();
    for (const [queue, entries] of Object.entries(byQueue || {})) {
      for (const [id, entry] of Object.entries(entries || {})) {
        listed.add(id);
        let job = this.jobs.get(id);
        const newer = job !== undefined && job.lastEventAt >= askedAt;
        if (job === undefined || (job.state === "finished" && !newer)) {
          const current = unique(entry.commands).indexOf(entry.current_cmd);
          job = this.fresh(id, entry.state === "pending" ? -1 : Math.max(current, 0));
        } else if (newer && job.state === "finished") {
          continue; // finished after the list was made
        }
        job.queue = queue;
        const commands = unique(entry.commands);
        if (commands.length) job.commands = commands;
        if (!newer && (entry.state === "pending" || entry.state === "running")) job.state = entry.state;
        job.position = typeof entry.queue_position === "string" ? entry.queue_position : null;
        job.queuedAt = parseTime(entry.time_queued) ?? job.queuedAt;
        job.startedAt = parseTime(entry.time_started) ?? job.startedAt;
        if (!newer) job.currentCmd = typeof entry.current_cmd === "string" ? entry.current_cmd : null;
        job.version += 1;
      }
    }
    for (const job of this.jobs.values()) {
      if (job.active && !listed.has(job.id) && job.lastEventAt < askedAt) {
        job.state = "finished";
        job.missed = true;
        job.killing = false;
        job.currentCmd = null;
        job.version += 1;
      }
    }
  }

  // After a reconnection: output sent meanwhile was not seen.
  gap() {
    for (const job of this.jobs.values()) {
      if (job.state === "running") job.partialUpTo = Number.MAX_SAFE_INTEGER;
    }
  }

  dismiss(id) {
    const job = this.jobs.get(id);
    if (job !== undefined && job.state === "finished") this.jobs.delete(id);
  }

  clearFinished() {
    for (const job of [...this.jobs.values()]) if (job.state === "finished") this.jobs.delete(job.id);
  }

  clear() {
    this.jobs.clear();
  }

  // Running jobs first (oldest start first), then pending ones in queue
  // order, then finished ones (latest first).
  sorted() {
    const rank = { running: 0, pending: 1, finished: 2 };
    const position = (j) => (j.position === null ? Infinity : Number(j.position));
    return [...this.jobs.values()].sort((a, b) => {
      if (a.state !== b.state) return rank[a.state] - rank[b.state];
      if (a.state === "running") return (a.startedAt ?? 0) - (b.startedAt ?? 0);
      if (a.state === "pending") {
        if (a.queue !== b.queue) return a.queue < b.queue ? -1 : 1;
        return position(a) - position(b) || (a.queuedAt ?? 0) - (b.queuedAt ?? 0);
      }
      return (b.finishedAt ?? 0) - (a.finishedAt ?? 0);
    });
  }

  counts() {
    const counts = { all: 0, pending: 0, running: 0, finished: 0 };
    const queues = new Map();
    for (const job of this.jobs.values()) {
      counts.all += 1;
      counts[job.state] += 1;
      if (!queues.has(job.queue)) queues.set(job.queue, { running: 0, pending: 0, finished: 0 });
      queues.get(job.queue)[job.state] += 1;
    }
    return { counts, queues };
  }
}
