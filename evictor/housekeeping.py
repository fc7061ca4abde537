"""Housekeeping: what dead fills leave behind.

- ``tmp/<sha>.part``: a fill's temp file.  Its ``flock`` is the fill lock
  (sidecar/fill.py), so one we can lock belongs to no running fill.  We remove
  it only while *holding* that lock, and only once it is older than the grace
  period: a fill may have just opened it and not yet locked it, and then its
  own inode re-check after locking sends it round again.
- ``tmp/<sha>.meta.part`` and ``tmp/<sha>.link.part``: a fill's metadata before
  its rename, and its finished file's second name on its way into ``objects/``.
  They carry no lock of their own; the fill holds the lock of ``<sha>.part``
  while they exist.
- ``meta/...`` files and ``marks/...`` with no object beside them (found by
  the scan): a fill writes a mark *before* renaming the object in, so only old
  ones are orphans, and the object is looked for once more right before the
  unlink.
- ``grants/...`` (``s3cache.grants``) of a window before the current one, or
  whose object is gone; what stays is counted toward the cache's bytes.
"""

from __future__ import annotations

import fcntl
import os
import stat as stat_mod
from dataclasses import dataclass, field
from typing import Callable, Iterable

from evictor.remove import object_for_meta, unlink
from evictor.report import Errors
from s3cache import grants
from s3cache.layout import TEMP_SUFFIX, Layout

# Long enough for any fill to get from writing metadata to renaming its object,
# and for a fill that has opened a temp file to lock it.
GRACE_SECONDS = 300.0

_PART = TEMP_SUFFIX.encode()
_SIDE_PARTS = (b".meta" + _PART, b".link" + _PART)  # locked through <sha>.part

# on_remove(kind, path, size), after each removal (or instead of it, in a dry run): what run_once prints.
OnRemove = Callable[[str, bytes, int], None]


@dataclass
class Swept:
    files: int = 0
    bytes: int = 0
    dirs: list[bytes] = field(default_factory=list)  # parents of what went, for pruning


def _open_nofollow(path: bytes) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return False


def _same_file(path: bytes, st: os.stat_result) -> bool:
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev)


def sweep_temp(layout: Layout, *, now: float, grace: float = GRACE_SECONDS, dry_run: bool = False,
               errors: Errors | None = None, on_remove: OnRemove | None = None) -> Swept:
    swept = Swept()
    tmp = os.fsencode(layout.tmp_dir)
    try:
        with os.scandir(tmp) as it:
            entries = [e for e in it if e.name.endswith(_PART)]
    except FileNotFoundError:
        return swept
    except OSError as exc:
        if errors is not None:
            errors.add(os.fsdecode(tmp), exc)
        return swept
    for entry in entries:
        name = entry.name
        # The lock that says "a fill owns this": the .part itself, or for
        # metadata the .part of the same object.
        side = next((suffix for suffix in _SIDE_PARTS if name.endswith(suffix)), None)
        lock_path = (tmp + b"/" + name[:-len(side)] + _PART) if side else entry.path
        fd = _open_nofollow(entry.path)
        if fd is None:
            continue  # gone already, or not a plain file
        lock_fd = fd if lock_path == entry.path else _open_nofollow(lock_path)
        try:
            if lock_fd is not None and not _lock(lock_fd):
                continue  # a fill is running
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode) or now - st.st_mtime < grace:
                continue
            if not _same_file(entry.path, st):
                continue  # replaced since we opened it: not the file we judged
            if dry_run or unlink(entry.path, errors):
                if on_remove is not None:
                    on_remove("temp", entry.path, st.st_size)
                swept.files += 1
                swept.bytes += st.st_size
        finally:
            # Closing drops our lock only after the unlink: no fill can have
            # taken this file over in between.
            if lock_fd is not None and lock_fd != fd:
                os.close(lock_fd)
            os.close(fd)
    return swept


def remove_orphan_metas(layout: Layout, candidates: list[bytes], *, now: float, grace: float = GRACE_SECONDS,
                        dry_run: bool = False, errors: Errors | None = None,
                        on_remove: OnRemove | None = None) -> Swept:
    swept = Swept()
    for meta in candidates:
        try:
            os.lstat(object_for_meta(layout, meta))
            continue  # its object arrived since the scan
        except FileNotFoundError:
            pass
        except OSError:
            continue
        try:
            st = os.lstat(meta)
        except OSError:
            continue
        if not stat_mod.S_ISREG(st.st_mode) or now - st.st_mtime < grace:
            continue  # rewritten since the scan: a fill is on its way
        if dry_run or unlink(meta, errors):
            if on_remove is not None:
                on_remove("orphan-meta", meta, st.st_size)
            swept.files += 1
            swept.bytes += st.st_size
            swept.dirs.append(os.path.dirname(meta))
    return swept


@dataclass
class GrantSweep:
    removed: int = 0       # grants of past windows, or of objects no longer cached
    live: int = 0
    bytes: int = 0         # allocated by the live grants and their directories: part of the cache's bytes
    dirs: list[bytes] = field(default_factory=list)  # directories left empty, for pruning


def sweep_grants(layout: Layout, ttl: int, *, now: float, dry_run: bool = False) -> GrantSweep:
    """Remove dead grants: of a window before the current one, or whose object is gone; and stray files.

    ``grants/<bucket>/<key>/<window>_.../<etag>``: a grant's directory is
    named by its window and sits in the directory named like its object.
    """
    result = GrantSweep()
    root = os.fsencode(layout.grants_dir)
    objects = os.fsencode(layout.objects_dir)
    current = int(grants.window(ttl, now)) if ttl else None
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        rel = dirpath[len(root):]
        parent, _, name = rel.rpartition(b"/")
        made_in = grants.window_of(name)
        alive = (bool(parent) and made_in is not None and current is not None and made_in >= current
                 and _is_file(objects + parent))
        kept = 0
        for filename in filenames:
            path = dirpath + b"/" + filename
            if alive:
                kept += 1
                result.live += 1
                result.bytes += _allocated(path)
            elif dry_run:
                result.removed += 1
            else:
                try:
                    os.unlink(path)
                    result.removed += 1
                except OSError:
                    kept += 1
        if rel and (kept or dirnames):
            result.bytes += _allocated(dirpath)
        elif rel:
            result.dirs.append(dirpath)
    return result


def _is_file(path: bytes) -> bool:
    try:
        return stat_mod.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _allocated(path: bytes) -> int:
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:
        return 0


def prune_grant_dirs(dirs: Iterable[bytes]) -> int:
    """``rmdir`` directories found empty, deepest first; one refilled meanwhile stays."""
    removed = 0
    for d in sorted(set(dirs), key=len, reverse=True):
        try:
            os.rmdir(d)
            removed += 1
        except OSError:
            pass
    return removed
