"""State files that hold other people's requests (parked approvals, recent replies, the
event spool, provisioning records): readable by the service's own user only.

A folder hostbus creates is 0700 and a file 0600, whatever the umask. A folder that
already exists is left as it is (it may be shared, like /var/lib); its files are still
made 0600. SQLite gives a database's -wal and -shm files the database file's mode.
"""

from __future__ import annotations

import os
from pathlib import Path


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
