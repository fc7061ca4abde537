"""The walk of the cache: every object file's recency and size, kept compactly, plus what housekeeping needs.

Owns the one walk each pass makes over ``objects/`` and, directory by directory
beside it, ``meta/`` and ``marks/``.  Walking the two trees in step lets us find orphaned
metadata by comparing directory listings, without one extra ``stat`` per
object.

Everything is bytes paths: S3 keys are UTF-8, but a file put there by hand (or
by an older version) may not be, and an undecodable name must neither crash
the pass nor be skipped forever.

A million objects must fit in well under 300 MB, so per-file facts go into
``array`` columns and one ``bytearray`` of names (about 40 bytes a file)
rather than a Python object per file.
"""

from __future__ import annotations

import os
import stat as stat_mod
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable

from evictor.report import Errors
from s3cache.layout import Layout


class PassAborted(Exception):
    """The process was asked to stop; the pass ends where it is (every step so far is complete)."""


@dataclass
class FileTable:
    """One row per object file, in walk order; a file's directory is found by bisecting ``dir_start``."""

    dirs: list[bytes] = field(default_factory=list)      # absolute directory of each run of rows
    dir_start: array = field(default_factory=lambda: array("Q"))  # first row of dirs[i]
    atime_ns: array = field(default_factory=lambda: array("q"))
    size: array = field(default_factory=lambda: array("q"))      # apparent bytes (what S3 sent)
    alloc: array = field(default_factory=lambda: array("q"))     # allocated bytes (what the disk gets back)
    name_end: array = field(default_factory=lambda: array("Q"))  # end of row i's name in ``names``
    names: bytearray = field(default_factory=bytearray)

    def __len__(self) -> int:
        return len(self.atime_ns)

    def path(self, i: int) -> bytes:
        d = self.dirs[bisect_right(self.dir_start, i) - 1]
        start = self.name_end[i - 1] if i else 0
        return d + b"/" + bytes(self.names[start:self.name_end[i]])


@dataclass
class ScanResult:
    table: FileTable
    files: int = 0
    bytes: int = 0
    alloc_bytes: int = 0
    # meta files and marks with no object beside them, already older than the grace period
    orphan_metas: list[bytes] = field(default_factory=list)
    # directories below a bucket that were empty and old: leftovers to prune
    empty_dirs: list[bytes] = field(default_factory=list)
    errors: Errors = field(default_factory=Errors)


def _list(path: bytes, result: ScanResult) -> list[os.DirEntry] | None:
    """The entries of ``path``; None if it does not exist (or vanished), [] if unreadable."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # PermissionError, EIO ...: skip this directory, not the pass
        result.errors.add(os.fsdecode(path), exc)
        return []


def _age(path: bytes, now: float) -> float | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    # mtime: a file's last write, a directory's last entry added or removed.
    # Fills write metadata right before renaming it in, so mtime is fresh then.
    return now - st.st_mtime


def scan(layout: Layout, *, now: float, grace: float,
         atime_overrides: dict[bytes, int] | None = None,
         should_stop: Callable[[], bool] | None = None) -> ScanResult:
    """Walk ``objects/``, ``meta/`` and ``marks/`` together.

    ``atime_overrides`` (object path -> ns) lets a dry run see the access-log
    hits it did not write to disk.
    """
    obj_root = os.fsencode(layout.objects_dir)
    meta_root = os.fsencode(layout.meta_dir)
    side_roots = (meta_root, *(os.fsencode(d) for d in layout.mark_dirs.values()))
    table = FileTable()
    result = ScanResult(table)
    overrides = atime_overrides or None

    # Hoisted for the inner loop: this runs a million times a pass.
    add_atime, add_size, add_alloc = table.atime_ns.append, table.size.append, table.alloc.append
    add_name_end, names = table.name_end.append, table.names
    S_ISREG = stat_mod.S_ISREG

    stack = [b""]  # paths relative to the roots: b"", b"/bucket", b"/bucket/dir" ...
    while stack:
        if should_stop is not None and should_stop():
            raise PassAborted()
        rel = stack.pop()
        obj_dir = obj_root + rel
        subdirs: set[bytes] = set()
        obj_files: set[bytes] = set()
        registered = False
        entries = _list(obj_dir, result)
        for entry in entries or ():
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.add(name)
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # evicted, or replaced, since the listing
                continue
            except OSError as exc:
                result.errors.add(os.fsdecode(entry.path), exc)
                continue
            if not S_ISREG(st.st_mode):  # symlinks, sockets ...: never ours, never followed
                continue
            obj_files.add(name)
            if not registered:
                table.dirs.append(obj_dir)
                table.dir_start.append(len(table.atime_ns))
                registered = True
            atime = st.st_atime_ns
            if overrides is not None:
                atime = max(atime, overrides.get(entry.path, 0))
            add_atime(atime)
            add_size(st.st_size)
            add_alloc(st.st_blocks * 512)
            names += name
            add_name_end(len(names))
            result.bytes += st.st_size
            result.alloc_bytes += st.st_blocks * 512

        # Metadata and marks (sparse: most directories have none) with no object beside them.
        side_listings = []
        for side_root in side_roots:
            side_dir = side_root + rel
            side_entries = _list(side_dir, result)
            side_listings.append((side_dir, side_entries))
            for entry in side_entries or ():
                name = entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.add(name)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                if name in obj_files:
                    continue
                # No object beside it: either a fill between writing metadata (or
                # its mark) and renaming the object (young), or an orphan (old).
                age = _age(entry.path, now)
                if age is not None and age >= grace:
                    result.orphan_metas.append(entry.path)

        # Directories below a bucket that hold nothing: leftovers of evictions
        # or failed fills.  Only old ones, so a fill's fresh makedirs is left alone.
        if rel.count(b"/") >= 2:
            for d, listing in ((obj_dir, entries), *side_listings):
                if listing is not None and not listing:
                    age = _age(d, now)
                    if age is not None and age >= grace:
                        result.empty_dirs.append(d)

        for name in subdirs:
            stack.append(rel + b"/" + name)

    result.files = len(table)
    return result
