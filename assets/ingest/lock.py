"""Opening the warehouse while another process may hold its lock: a bounded wait that says what it waits
for, then one line naming the holder and the fix. Plain logic, no dagster import.

DuckDB lets one process write a database file; a second one gets an IOException whose message names the
holder ("Conflicting lock is held in /usr/bin/python3 (PID 4242) by user ana")."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

_HOLDER = re.compile(
    r"lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)(?: by user (?P<user>\S+?))?[.\s]"
)


class WarehouseLocked(RuntimeError):
    """Another process held the warehouse's lock for the whole wait; the message is one line naming the fix."""


def lock_holder(message: str) -> str:
    """'PID 4242 (/usr/bin/python3, user ana)' from DuckDB's lock error, or 'another process'."""
    m = _HOLDER.search(message + " ")
    if not m:
        return "another process"
    user = f", user {m['user']}" if m["user"] else ""
    return f"PID {m['pid']} ({m['program']}{user})"


def connect_warehouse(path: str | Path, wait_s: float = 30.0, log=None, poll_s: float = 0.5):
    """A read-write DuckDB connection to `path`, retried for up to `wait_s` seconds while another process
    holds the lock (logged once, naming the holder); then WarehouseLocked."""
    import duckdb

    log = log or logging.getLogger("malles.ingest")
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as e:
            msg = str(e)
            if "lock" not in msg.lower():
                raise
            holder = lock_holder(msg)
            if time.monotonic() >= deadline:
                raise WarehouseLocked(
                    f"the warehouse {path} is locked by {holder} (waited {wait_s:g} s): let that run finish or "
                    f"stop it, or pass --warehouse for another file"
                ) from None
            if not said:
                log.warning(
                    f"waiting up to {wait_s:g} s for the lock on the warehouse {path}, held by {holder}"
                )
                said = True
            time.sleep(poll_s)
