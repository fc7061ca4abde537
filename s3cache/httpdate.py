"""HTTP dates (RFC 9110 IMF-fixdate and its obsolete forms) to and from Unix time."""

from __future__ import annotations

import email.utils


def parse_http_date(value: str | None) -> float | None:
    """Unix time of an HTTP date, or None when absent or unreadable (never raises)."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def format_http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)
