"""How old a cache entry is, for S3CACHE_TTL: since it was fetched or last confirmed by S3.

The time lives in the entry's metadata (``fetched_at``, then ``validated_at``
after each ``304``), so it survives restarts and is dropped with the entry.
"""

from __future__ import annotations

import json
import os
import time

from s3cache.layout import Layout, ObjectRef


def age(layout: Layout, ref: ObjectRef, now: float | None = None) -> float:
    now = time.time() if now is None else now
    try:
        with open(layout.meta_path(ref), encoding="utf-8") as fh:
            meta = json.load(fh)
        since = meta.get("validated_at") or meta.get("fetched_at")
    except (OSError, ValueError):
        since = None
    if since is None:
        # No metadata: the file's ctime is when the fill renamed it into place (or later).
        try:
            since = os.stat(layout.object_path(ref)).st_ctime
        except OSError:
            return float("inf")
    return now - float(since)


def mark_validated(layout: Layout, ref: ObjectRef, now: float | None = None) -> None:
    """Record that S3 confirmed the entry; best effort (a failure only means an earlier recheck)."""
    path = layout.meta_path(ref)
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
        meta["validated_at"] = time.time() if now is None else now
        tmp = layout.meta_temp_path(ref).with_suffix(".validated")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, ensure_ascii=False)
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass
