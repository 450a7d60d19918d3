"""The audit log: one JSON line per request an agent decided on, append-only.

Each record is one write to a file opened in append mode, so lines never interleave
and log rotation is safe: after a rename the next record creates a new file. Arguments
are not logged, only a digest of them (they may hold secrets); the digest lets two
records be matched without revealing what they carried.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from hostbus.envelope import now_rfc3339

log = logging.getLogger("hostbus.audit")


def args_digest(args: Any) -> str:
    canonical = orjson.dumps(args, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


class AuditLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = orjson.dumps({"time": now_rfc3339(), **record}) + b"\n"
        with self._lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError:
                # Losing an audit line is bad; taking the agent down for it is worse.
                log.exception("could not append to the audit log %s", self.path)
