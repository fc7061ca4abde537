"""Object metadata: the file ``meta/<bucket>/<key>`` kept beside each cached object; its format and every read and write.

The format (UTF-8 JSON, one object, non-ASCII written as is)::

    {"bucket": "...", "key": "...", "size": 1234, "fetched_at": 1764633600.5,
     "headers": {"content-type": "...", "etag": "\\"...\\"", "x-amz-meta-owner": "...", ...},
     "validated_at": 1764637200.1}

- ``headers``: the object's own S3 response headers a hit answers with
  (``KEPT_HEADERS`` and every ``x-amz-meta-*``), lower-case names.  Only the
  object's own: sidecar/hit_headers.py leaves out what a URL's ``response-*``
  parameters overrode, and adds later what a response naming the same ETag tells.
- ``fetched_at``: when the fill wrote the record; ``validated_at`` (absent
  until then): the last time S3 confirmed the entry with a 304 under S3CACHE_TTL.
- ``bucket``, ``key``, ``size``: the object, for a reader of the directory.

Who writes it, and under which rule:

- a fill writes the whole record right after renaming the object in
  (``write_fill``), holding the object's fill lock; a refresh removes the old
  record before its new object goes in (``forget``);
- a revalidation adds the headers S3 told (``add_headers``) only when they are
  news, under the object's fill lock, so a running refresh is never overwritten
  with the old object's headers;
- a 304 under S3CACHE_TTL moves ``validated_at`` (``mark_validated``), best
  effort and without the lock.

Every write goes through s3cache.atomic with its temp file in ``tmp/``: a
reader sees a whole record or none.  A missing or unreadable record is never an
error: the object is still served, and revalidated by its mtime.  The paths
are s3cache.layout's; the evictor removes a record with its object and sweeps
orphans (evictor/remove.py, evictor/housekeeping.py).
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

from s3cache import atomic, objectlock
from s3cache.layout import Layout, ObjectRef

# The response headers a record keeps (besides x-amz-meta-*): what a hit should answer with (S3 fidelity).
KEPT_HEADERS = (
    "content-type", "content-encoding", "content-disposition", "content-language",
    "cache-control", "expires", "etag", "last-modified", "x-amz-version-id",
    "x-amz-server-side-encryption", "x-amz-storage-class",
)


def kept(name: str) -> bool:
    """Is this (lower-case) response header one a record keeps?"""
    return name in KEPT_HEADERS or name.startswith("x-amz-meta-")


# -- reading ------------------------------------------------------------------------------


def read(layout: Layout, ref: ObjectRef) -> dict | None:
    """The whole record, or None when there is none (or it is not a record)."""
    return atomic.read_json(layout.meta_path(ref))


def load_headers(layout: Layout, ref: ObjectRef) -> dict[str, str]:
    """The stored headers (lower-case names); empty without a record."""
    headers = (read(layout, ref) or {}).get("headers", {})
    return headers if isinstance(headers, dict) else {}


def confirmed_at(layout: Layout, ref: ObjectRef) -> float | None:
    """When S3 last vouched for the entry (``validated_at``, else ``fetched_at``); None without a record."""
    meta = read(layout, ref) or {}
    try:
        since = meta.get("validated_at") or meta.get("fetched_at")
        return None if since is None else float(since)
    except (TypeError, ValueError):
        return None


# -- writing ------------------------------------------------------------------------------


def write_fill(layout: Layout, ref: ObjectRef, headers: Mapping[str, str], size: int, *,
               install: atomic.Install = os.replace) -> None:
    """The record of a fill that just renamed its object in; the caller holds the object's fill lock.

    ``install`` renames the temp file to ``meta/<bucket>/<key>`` (the fill's
    own, which makes the parent directories).  Raises what the write raised.
    """
    meta = {
        "bucket": ref.bucket,
        "key": ref.key,
        "size": size,
        "fetched_at": time.time(),
        "headers": {k: v for k, v in headers.items() if kept(k)},
    }
    _write(layout.meta_path(ref), meta, layout.meta_temp_path(ref), install)


def forget(layout: Layout, ref: ObjectRef) -> None:
    """Remove the record (a refresh, before its new object goes in); already gone is fine."""
    try:
        os.unlink(layout.meta_path(ref))
    except FileNotFoundError:
        pass


def mark_validated(layout: Layout, ref: ObjectRef, now: float | None = None) -> None:
    """Record that S3 confirmed the entry; best effort (a failure only means an earlier recheck).

    Under the object's lock, like every other change to the record: unlocked, a 304 racing a
    refresh could write the old object's record back over the new object's.  When a fill holds
    the lock, what it writes is newer than this confirmation, which is dropped.
    """
    lock = _take_fill_lock(str(layout.temp_path(ref)))
    if lock is None:
        return
    try:
        meta = read(layout, ref)
        if meta is None:
            return
        meta["validated_at"] = time.time() if now is None else now
        _write(layout.meta_path(ref), meta, layout.meta_temp_path(ref))  # the lock's holder owns that temp name
    except OSError:
        pass
    finally:
        objectlock.release(lock, str(layout.temp_path(ref)))


def add_headers(layout: Layout, ref: ObjectRef, told: Mapping[str, str], etag: str | None) -> None:
    """Add headers S3 just told about the object to its record, if ``etag`` is the stored one.

    Only when something is new; then under the object's fill lock (the usual
    case, on every revalidated hit, takes no lock), so a refresh cannot be
    overwritten with the old object's headers.  Best effort.
    """
    def news(meta: dict | None) -> dict | None:
        stored = (meta or {}).get("headers", {})
        if not etag or etag != stored.get("etag") or all(stored.get(k) == v for k, v in told.items()):
            return None
        return {**stored, **told}

    path = layout.meta_path(ref)
    if news(atomic.read_json(path)) is None:
        return
    lock = _take_fill_lock(str(layout.temp_path(ref)))
    if lock is None:
        return  # a fill of this object is running: what it writes is newer than what we know
    try:
        meta = atomic.read_json(path)  # again, under the lock
        headers = news(meta)
        if meta is None or headers is None:
            return
        meta["headers"] = headers
        _write(path, meta, layout.meta_temp_path(ref))  # the fill lock's holder owns that temp name
    except OSError:
        pass
    finally:
        objectlock.release(lock, str(layout.temp_path(ref)))  # the temp file is ours while we hold the lock


def _write(path: os.PathLike | str, meta: dict, temp: os.PathLike | str,
           install: atomic.Install = os.replace) -> None:
    atomic.write(path, json.dumps(meta, ensure_ascii=False), temp=temp, install=install)


def _take_fill_lock(path: str) -> int | None:
    """The object's lock (s3cache.objectlock), if free; None when a fill (or anyone) holds it."""
    try:
        return objectlock.try_lock(path)
    except OSError:  # cannot create the temp file, or it kept being swept
        return None
