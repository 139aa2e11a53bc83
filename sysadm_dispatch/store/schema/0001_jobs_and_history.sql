-- Version 1: the jobs a client was promised (accepted, not yet finished)
-- and the history of finished jobs.

CREATE TABLE active_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    time_queued REAL NOT NULL,
    time_started REAL);

CREATE TABLE history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    time_finished REAL NOT NULL,
    record TEXT NOT NULL);

CREATE INDEX history_by_time ON history (time_finished);

CREATE INDEX history_by_job ON history (job_id);
