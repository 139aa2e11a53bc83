"""
A job that forks without pause: every millisecond a child that leaves the
job's session, drops its environment (and with it the job's marker) and
sleeps.  Both ignore SIGTERM.  A child forked after the server looked and
before the parent died would be out of reach: only a tree frozen before
SIGKILL is killed whole.  Each child appends its pid to PIDS_FILE first.

    python fork_loop.py PIDS_FILE [MAX_CHILDREN]
"""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
for _ in range(limit):
    if os.fork() == 0:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.setsid()
        os.execve("/bin/sleep", ["sleep", "300"], {})  # noqa: S606 (no shell: none is wanted)
    time.sleep(0.001)
signal.pause()
