"""Redaction of credentials in anything logged: a log must never hand out a working URL.

Caddy's access log redacts the same query parameters itself (Caddyfile ``log``
filter); every other log line of the sidecar and the evictor goes through
``redact`` — explicitly where a line is built, and through ``RedactingFilter``
on the process's log handlers, so a URL in an exception message (urllib3
puts it there) is caught as well.
"""

from __future__ import annotations

import logging
import re

# Query parameters whose values grant access (or name the key that does).
SECRET_PARAMS = ("Signature", "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token",
                 "AWSAccessKeyId")
REDACTED = "REDACTED"

_PARAM = re.compile(r"(?i)(?<![A-Za-z0-9-])(" + "|".join(re.escape(p) for p in SECRET_PARAMS)
                    + r")(=|%3D)([^&\s\"'<>#]*)")


def redact(text: str) -> str:
    """``text`` with the value of every secret query parameter replaced by REDACTED."""
    return _PARAM.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Redacts a record's message (arguments included) and its traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put a RedactingFilter on every handler of ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
