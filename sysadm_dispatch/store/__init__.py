"""
Durable state: the SQLite journal of jobs and the history queries over it.

- ``database``: ``Store``, what the dispatcher asks of the store (Deferreds);
- ``writer``: the thread that runs every SQLite call, batching writes into commits;
- ``tables``: the statements, run on that thread;
- ``migrations`` and ``schema/*.sql``: the schema, one file per version, and opening a file;
- ``records``: what is kept and handed back, and ``StoreError``;
- ``retention``: ``HistoryPruner``, a timer service;
- ``history``: ``read_logs`` arguments and replies (pure).
"""
