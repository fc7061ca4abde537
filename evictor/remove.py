"""Removing things from the cache without breaking what runs beside us.

- An object is removed with a plain ``unlink``: a response being served from
  it keeps its open file and finishes; the next request is a miss.
- An object goes with its metadata, marks and grants by ``s3cache.entries``, the one
  removal every part uses, under the entry's lock: an object whose fill (a
  refresh) is running is skipped, never removed under the fill's feet.
- Directories are only ever removed with ``os.rmdir``, which fails on anything
  not empty, and never a bucket's top directory (fills would recreate it over
  and over).  A fill that loses the race with an ``rmdir`` gets ENOENT from
  its rename and retries makedirs+rename (sidecar/fill.py).
"""

from __future__ import annotations

import os
from typing import Iterable

from evictor.report import Errors
from s3cache import entries
from s3cache.layout import Layout


def unlink(path: bytes, errors: Errors | None = None) -> bool:
    """True if we removed it; a file already gone is not an error, a refused unlink is recorded."""
    def record(failed, exc: OSError) -> None:
        if errors is not None:
            errors.add(os.fsdecode(failed), exc)
    return entries.unlink(path, record)


def meta_for_object(layout: Layout, object_path: bytes) -> bytes:
    return os.fsencode(layout.meta_path_for_object_file(os.fsdecode(object_path)))


def marks_for_object(layout: Layout, object_path: bytes) -> list[bytes]:
    return [os.fsencode(p) for p in layout.mark_paths_for_object_file(os.fsdecode(object_path))]


def object_for_meta(layout: Layout, meta_path: bytes) -> bytes:
    return os.fsencode(layout.object_path_for_meta_file(os.fsdecode(meta_path)))


def remove_object(layout: Layout, object_path: bytes, meta_path: bytes, errors: Errors,
                  mark_paths: Iterable[bytes] = ()) -> bool:
    """Remove an object with its metadata, marks and grants (``entries.remove_idle``); True if it was ours to remove."""
    def on_error(path, exc: OSError) -> None:
        errors.add(os.fsdecode(path), exc)
    return entries.remove_idle(layout, object_path, on_error, meta_path, list(mark_paths))


def prune_dirs(layout: Layout, dirs: Iterable[bytes]) -> int:
    """``rmdir`` each directory and its now-empty parents, stopping above nothing below a bucket.

    Returns how many were removed.  Deepest first, so chains empty out in one call.
    """
    roots = (os.fsencode(layout.objects_dir), os.fsencode(layout.meta_dir),
             *(os.fsencode(d) for d in layout.mark_dirs.values()))
    removed = 0
    for d in sorted(set(dirs), key=len, reverse=True):
        root = next((r for r in roots if d.startswith(r + b"/")), None)
        if root is None:
            continue
        # b"/bucket/sub" has two slashes: the shallowest directory we may remove.
        while d[len(root):].count(b"/") >= 2:
            try:
                os.rmdir(d)
            except OSError:  # not empty (a fill got there first), already gone, busy: leave it
                break
            removed += 1
            d = os.path.dirname(d)
    return removed
