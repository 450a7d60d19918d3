"""Logging set-up for the daemons and services, shared so their logs read alike.

Values that came off the wire (message ids, user names, routing keys) end up in log
lines; a newline or another control character in one could forge a line. The formatter
escapes control characters in every message, so no logging call can forget to.
"""

from __future__ import annotations

import logging
import re
import sys

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with each control character shown as its escape (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in the message (tracebacks keep their lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler])
    # pika narrates every connection step at INFO and logs a dropped connection as
    # several ERRORs with tracebacks; the transport reports each in one line of its own
    # ("lost the connection to ...", "reconnected to ..."), so only pika's worst shows.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    # proton says "Connecting to ..." and "Connected to ..." at INFO on every
    # (re)connect, which the transport already reports in its own words.
    logging.getLogger("proton").setLevel(logging.WARNING)
