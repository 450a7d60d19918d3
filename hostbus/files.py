"""State files that hold other people's requests (parked approvals, recent replies, the
event spool, provisioning records): readable by the service's own user only, and what a
store does when its disk fails it.

A folder hostbus creates is 0700 and a file 0600, whatever the umask. A folder that
already exists is left as it is (it may be shared, like /var/lib); its files are still
made 0600. SQLite gives a database's -wal and -shm files the database file's mode.

A full (or read-only, or failing) state disk must not take an agent down: each store
keeps in memory what it cannot write, says so once (``Durability``), and writes it out
once it can again.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("hostbus.state")


def private_folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return path


def private_file(path: str | Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist (its folder 0700 if
    missing), else make it 0600; return it. Call before SQLite opens it."""
    path = Path(path)
    private_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path


# What a failed write says about the disk: SQLite's primary result codes (the low byte of
# an extended code) and errno values for which the disk, not the code, is at fault.
_SQLITE_DISK_CODES = {8: "read-only", 10: "I/O error", 13: "full", 14: "cannot open"}
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def open_database(path: str | Path | None, *, synchronous: str) -> sqlite3.Connection:
    """A state database: the file made private (0600 in a 0700 folder) before SQLite
    opens it, or in memory without a path; shared by threads (each store locks), in
    autocommit mode, WAL journal. ``synchronous``: NORMAL survives a crash of the
    process (not of the machine), FULL survives power loss."""
    if path is not None:
        private_file(path)
    db = sqlite3.connect(str(path) if path is not None else ":memory:",
                         check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


def disk_trouble(exc: BaseException) -> str | None:
    """Why writing a state file failed, if the disk is the cause (full, out of quota,
    read-only, failing): the reason to report; None for anything else (a bug)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _SQLITE_DISK_CODES:
            return str(exc)
        return None
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return os.strerror(exc.errno)
    return None


class Durability:
    """Whether one store's file takes writes now. A store that cannot write keeps what
    it must in memory and carries on; this says so once in the log (and once when
    writing works again), gives the reason for the heartbeat, and spaces out the
    store's attempts to write again (1 s, doubling to 10 s)."""

    def __init__(self, store: str, path: str | Path, meanwhile: str) -> None:
        self.store = store  # how the heartbeat names it
        self.on_disk = str(path) != ":memory:"  # else it cannot fail for the disk's sake
        self.path = Path(path)
        self.meanwhile = meanwhile  # what the store does without its file
        self.reason: str | None = None
        self._delay = 1.0
        self._next_try = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        if self.reason is None:
            log.warning("cannot write %s (%s): %s until it can", self.path, reason,
                        self.meanwhile)
            self._delay = 1.0
        elif now >= self._next_try:  # a retry that failed: wait longer for the next
            self._delay = min(10.0, self._delay * 2)
        self.reason = reason
        self._next_try = now + self._delay

    def recovered(self) -> None:
        if self.reason is not None:
            log.warning("%s takes writes again: %s is back to normal", self.path, self.store)
        self.reason = None

    def due(self) -> bool:
        """Whether a store that cannot write should try again now."""
        return self.reason is not None and time.monotonic() >= self._next_try
