"""When a presigned URL expires, read from the URL itself, so tests wait for expiry instead of guessing it.

S3 (and the proxy, and the test origin) refuse a URL once the current second is past its last valid
second: SigV2 ``Expires`` (epoch seconds), SigV4 ``X-Amz-Date`` + ``X-Amz-Expires``.
"""

from __future__ import annotations

import calendar
import time
from urllib.parse import parse_qs, urlsplit


def expires_at(url: str) -> float:
    """The last second at which ``url`` is still valid (epoch seconds)."""
    query = parse_qs(urlsplit(url).query)
    if "Expires" in query:
        return float(query["Expires"][0])
    signed = calendar.timegm(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
    return float(signed + int(query["X-Amz-Expires"][0]))


def wait_expired(*urls: str) -> None:
    """Sleep until every one of ``urls`` has expired for anyone comparing whole seconds."""
    deadline = max(expires_at(u) for u in urls) + 1.0
    while (left := deadline - time.time()) > 0:
        time.sleep(left + 0.01)
