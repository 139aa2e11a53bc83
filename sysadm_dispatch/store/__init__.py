"""Durable state: the SQLite journal of jobs and the history queries over it."""
