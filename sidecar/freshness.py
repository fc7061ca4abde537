"""How old a cache entry is, for S3CACHE_TTL: since it was fetched or last confirmed by S3.

The time lives in the entry's metadata (``fetched_at``, then ``validated_at``
after each ``304``: s3cache/metadata.py), so it survives restarts and is
dropped with the entry.
"""

from __future__ import annotations

import os
import time

from s3cache import metadata
from s3cache.layout import Layout, ObjectRef


def age(layout: Layout, ref: ObjectRef, now: float | None = None) -> float:
    now = time.time() if now is None else now
    since = metadata.confirmed_at(layout, ref)
    if since is None:
        # No metadata: the file's ctime is when the fill renamed it into place (or later).
        try:
            since = os.stat(layout.object_path(ref)).st_ctime
        except OSError:
            return float("inf")
    return now - since
