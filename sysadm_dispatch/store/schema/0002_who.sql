-- Version 2: who submitted a job and who ended it (a user, timeout,
-- shutdown); NULL in rows written before.

ALTER TABLE active_jobs ADD COLUMN submitted_by TEXT;

ALTER TABLE history ADD COLUMN submitted_by TEXT;

ALTER TABLE history ADD COLUMN killed_by TEXT;
