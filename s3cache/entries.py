"""A cache entry as one unit: an object with its metadata and marks; its lock, its removal, its listing.

The lock is the object's lock (``s3cache.objectlock``, the flock on
``Layout.temp_path``).  A fill holds it from its first byte until the object
*and* its metadata and marks are in place (``sidecar/fill.py``); everything
else that changes an entry takes the same lock: a purge waits for it
(bounded), the evictor and the access check's removal after S3's ``404`` skip
an entry whose fill is running.  So a purge racing a fill leaves either
nothing or the new complete object with its metadata, never half of either.

Removal (``remove_files``; ``remove_idle`` for removals that pick victims by file): the object goes first, its metadata, marks and
grants (``s3cache.grants``) second: a crash in between leaves an orphaned metadata file or mark (swept by
the evictor), never a served object without its metadata.  An object being
served when it is unlinked finishes its response.

The listing walks ``objects/`` in name order (``<bucket>/<key>``, bytewise),
descending only where a prefix and a paging cursor allow.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

from s3cache import grants, metadata, objectlock
from s3cache.layout import MARK_KINDS, Layout, ObjectRef, Uncacheable
from s3cache.ledger import CacheSize

# How long a purge waits for a running fill of the same object by default.
DEFAULT_WAIT = 30.0


def unlink(path, on_error: Callable[[object, OSError], None] | None = None) -> bool:
    """True if we removed it; already gone is False; another refusal goes to ``on_error`` (raised without one)."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:  # PermissionError, EBUSY, EROFS ...: report it, keep going
        if on_error is None:
            raise
        on_error(path, exc)
        return False


def remove_files(object_path, meta_path, mark_paths: Iterable = (),
                 on_error: Callable[[object, OSError], None] | None = None, grant_dir=None) -> bool:
    """Unlink an object, then its metadata, marks and grants; True if the object was there to remove.

    The one sequence every removal uses (purge, the access check, the evictor).
    Callers hold the entry's lock where they can name it; paths are str or bytes.
    """
    if not unlink(object_path, on_error):
        return False
    unlink(meta_path, on_error)
    for mark in mark_paths:
        unlink(mark, on_error)
    if grant_dir is not None:
        grants.remove_dir(grant_dir)
    return True


def remove_idle(layout: Layout, object_path: bytes, on_error: Callable[[object, OSError], None],
                meta_path: bytes | None = None, mark_paths: Iterable[bytes] | None = None) -> bool:
    """Remove an object file's entry unless a fill holds its lock; True if the object was there to remove.

    The removal of whoever picks victims by file (the evictor's pass, a fill making room from
    ``s3cache.victims``): an entry being filled (refreshed) right now is not a victim.  Under the
    entry's lock when the path names a key a fill could write (anything else no fill ever touches).
    """
    name = os.fsdecode(object_path)
    if meta_path is None:
        meta_path = os.fsencode(layout.meta_path_for_object_file(name))
    if mark_paths is None:
        mark_paths = [os.fsencode(p) for p in layout.mark_paths_for_object_file(name)]
    grant_dir = os.fsencode(layout.grant_dir_for_object_file(name))
    try:
        tmp = str(layout.temp_path(layout.ref_for_object_file(name)))
    except UnicodeEncodeError:  # an undecodable name: no fill's
        return remove_files(object_path, meta_path, mark_paths, on_error, grant_dir)
    try:
        fd = objectlock.try_lock(tmp)
    except OSError as exc:
        on_error(tmp, exc)
        return False
    if fd is None:
        return False
    try:
        return remove_files(object_path, meta_path, mark_paths, on_error, grant_dir)
    finally:
        objectlock.release(fd, tmp)


@dataclass(frozen=True)
class Removal:
    bucket: str
    key: str
    outcome: str      # "removed", "absent" (not cached), "busy" (a fill held it past the wait), "error"
    bytes: int = 0
    detail: str = ""

    def record(self) -> dict:
        return asdict(self)


def remove(layout: Layout, ref: ObjectRef, *, wait: float = 0.0) -> Removal:
    """Remove ``ref``'s entry under its lock, waiting up to ``wait`` seconds for a running fill.

    The object is unlinked and subtracted from the cache's size (``s3cache.ledger``) under the
    ledger's lock, so the sidecar's live size learns of it whichever process removed it.
    """
    try:
        obj, meta = layout.object_path(ref), layout.meta_path(ref)
        marks = [layout.mark_path(ref, kind) for kind in MARK_KINDS]
        grant_dir = layout.grant_dir(ref)
    except Uncacheable as exc:
        return Removal(ref.bucket, ref.key, "absent", detail=f"never cached: {exc}")
    tmp = str(layout.temp_path(ref))
    try:
        layout.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd = objectlock.acquire_within(tmp, wait)
    except OSError as exc:
        return Removal(ref.bucket, ref.key, "error", detail=f"temp file: {exc.strerror or exc}")
    if fd is None:
        return Removal(ref.bucket, ref.key, "busy", detail=f"a fill still held it after {wait:g}s")
    try:
        try:
            size = os.lstat(obj).st_size
        except FileNotFoundError:
            size = 0
        except OSError as exc:
            return Removal(ref.bucket, ref.key, "error", detail=exc.strerror or str(exc))
        try:
            removed = CacheSize(layout.cache_bytes_file).removing(
                size, lambda: remove_files(obj, meta, marks, grant_dir=grant_dir))
        except OSError as exc:
            return Removal(ref.bucket, ref.key, "error", detail=exc.strerror or str(exc))
        if not removed:
            return Removal(ref.bucket, ref.key, "absent")
        return Removal(ref.bucket, ref.key, "removed", bytes=size)
    finally:
        objectlock.release(fd, tmp)


# -- listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    bucket: str
    key: str
    size: int
    stored: float | None       # when the fill stored it (its metadata's fetched_at)
    last_access: float         # the file's atime (the evictor replays Caddy's hits into it each pass)
    etag: str | None           # S3's ETag, as stored with the object

    @property
    def name(self) -> str:
        return f"{self.bucket}/{self.key}"

    def record(self) -> dict:
        return {"bucket": self.bucket, "key": self.key, "size": self.size, "stored": self.stored,
                "last_access": self.last_access, "etag": self.etag}


def _entry(layout: Layout, bucket: str, key: str, path: str) -> Entry | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None  # gone since the listing
    meta = metadata.read(layout, ObjectRef(bucket, key)) or {}
    stored = meta.get("fetched_at")
    etag = (meta.get("headers") or {}).get("etag") if isinstance(meta.get("headers"), dict) else None
    return Entry(bucket, key, st.st_size, stored if isinstance(stored, (int, float)) else None,
                 st.st_atime, etag if isinstance(etag, str) else None)


def lookup(layout: Layout, ref: ObjectRef) -> Entry | None:
    """The entry of one object, or None when it is not cached (or never could be)."""
    try:
        path = layout.object_path(ref)
    except Uncacheable:
        return None
    if not path.is_file() or path.is_symlink():
        return None
    return _entry(layout, ref.bucket, ref.key, str(path))


def _listing(path: str) -> list[tuple[str, bool]]:
    """(name, is_dir) sorted so that full names come out in bytewise order: a directory sorts as ``name/``."""
    try:
        with os.scandir(path) as it:
            items = []
            for e in it:
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                    if not is_dir and not e.is_file(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                items.append((e.name, is_dir))
    except OSError:
        return []
    return sorted(items, key=lambda item: item[0] + "/" if item[1] else item[0])


def _undecodable(name: str) -> bool:
    try:
        name.encode("utf-8")
        return False
    except UnicodeEncodeError:  # os.fsdecode's surrogate escapes: not a key any client can name
        return True


def iter_entries(layout: Layout, prefix: str = "", after: str = "") -> Iterator[Entry]:
    """Cached objects whose ``<bucket>/<key>`` starts with ``prefix`` and sorts after ``after``, in name order."""
    root = str(layout.objects_dir)

    def wanted_dir(dname: str) -> bool:  # dname ends with "/"
        if not (dname.startswith(prefix) or prefix.startswith(dname)):
            return False
        # Every name below dname starts with it: all are <= after unless after is inside it or before it.
        return not (after and after > dname and not after.startswith(dname))

    def walk(path: str, rel: str) -> Iterator[Entry]:
        for name, is_dir in _listing(path):
            if _undecodable(name):
                continue
            full = rel + name
            if is_dir:
                if wanted_dir(full + "/"):
                    yield from walk(os.path.join(path, name), full + "/")
            elif rel and full.startswith(prefix) and full > after:
                bucket, _, key = full.partition("/")
                entry = _entry(layout, bucket, key, os.path.join(path, name))
                if entry is not None:
                    yield entry

    yield from walk(root, "")


def page(layout: Layout, prefix: str = "", after: str = "", limit: int = 1000) -> tuple[list[Entry], str | None]:
    """One page of ``iter_entries``, and the cursor of the next (None: this was the last)."""
    out: list[Entry] = []
    for entry in iter_entries(layout, prefix, after):
        if len(out) == limit:
            return out, out[-1].name
        out.append(entry)
    return out, None


def purge_prefix(layout: Layout, prefix: str, *, wait: float = DEFAULT_WAIT) -> Iterator[Removal]:
    """Remove every cached object under a bucket-qualified prefix (``bucket/`` at least), one lock at a time."""
    check_prefix(prefix)
    for entry in iter_entries(layout, prefix):
        yield remove(layout, ObjectRef(entry.bucket, entry.key), wait=wait)


def check_prefix(prefix: str) -> None:
    """A purge prefix names its bucket (``bucket/...``): no prefix spans buckets by accident."""
    bucket, slash, _ = prefix.partition("/")
    if not slash or not bucket:
        raise ValueError(f"prefix {prefix!r} must start with a bucket and a slash (BUCKET/ or BUCKET/KEYPREFIX)")


def parse_name(name: str) -> ObjectRef:
    """``bucket/key`` -> ObjectRef; ValueError when either part is missing."""
    bucket, slash, key = name.partition("/")
    if not slash or not bucket or not key:
        raise ValueError(f"{name!r} is not BUCKET/KEY")
    return ObjectRef(bucket, key)


OUTCOMES = ("removed", "absent", "busy", "error")


def summary(removals: Iterable[Removal]) -> dict:
    """What a purge did, as the CLI and the HTTP API both report it."""
    items = list(removals)
    counts = {outcome: sum(1 for r in items if r.outcome == outcome) for outcome in OUTCOMES}
    return {"counts": counts, "bytes": sum(r.bytes for r in items), "objects": [r.record() for r in items]}


def printable(name: str) -> str:
    """A name for one line of text: as it is, or JSON-quoted when it holds control characters (or quotes)."""
    return name if name.isprintable() and not name.startswith('"') else json.dumps(name, ensure_ascii=False)
