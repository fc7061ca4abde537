"""The cache's size between eviction passes: a journal of every change, and the tally the sidecar keeps of it.

Each eviction pass measures the cache (its walk) and records the result in
``run/evictor-passes.jsonl`` (``bytes_after``, ``scanned_files -
evicted_files``, ``started_at``).  Between passes, whoever changes the cache
appends one line here: a fill (``+size``, or ``new - old`` when it replaced
an entry), a purge or a removal after S3's ``404`` (``-size``), whichever
process made it (the sidecar, ``s3cache warm``, ``s3cache purge`` with the
stack stopped).  The evictor's own removals are in its pass and never here.

    live size = last pass's bytes_after + the journal's changes since that pass started

So no page view walks the cache, and the figure is the same after a restart
(both files persist in ``run/``).  The one inexactness: a change made while a
pass is walking may be counted by the walk and the journal both (or, for a
removal, neither twice): the next pass measures again.

The journal is ``run/size-journal.jsonl``; the evictor rotates it to
``size-journal.1.jsonl`` after a pass, once it is large (at most once a
minute).  Everything still needed (since the last pass started) is then in the
two files: a rotation at one pass's end drops only what is older than the next
pass's start.  Writers
append one short line per change with ``O_APPEND`` (atomic between
processes); readers take whole lines only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from s3cache.layout import Layout

JOURNAL = "size-journal.jsonl"
ROTATED = "size-journal.1.jsonl"
ROTATE_BYTES = 1 << 20
# At most one rotation per this many seconds: far longer than the collector's refresh (5 s), so a reader
# never misses a rotation between two reads (a file it knew by inode could otherwise be gone and its
# inode number reused by the next journal).
ROTATE_MIN_SECONDS = 60.0


def journal_path(layout: Layout) -> str:
    return str(layout.run_dir / JOURNAL)


def rotated_path(layout: Layout) -> str:
    return str(layout.run_dir / ROTATED)


def record(layout: Layout, bytes_delta: int, files_delta: int, why: str, now: float | None = None) -> bool:
    """Append one change; best effort (False if it could not be written: the next pass measures anyway)."""
    line = json.dumps({"t": time.time() if now is None else now, "bytes": int(bytes_delta),
                       "files": int(files_delta), "why": why}, separators=(",", ":")) + "\n"
    try:
        fd = os.open(journal_path(layout), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o664)
    except OSError:
        return False
    try:
        return os.write(fd, line.encode()) == len(line)
    except OSError:
        return False
    finally:
        os.close(fd)


def rotate(layout: Layout, max_bytes: int = ROTATE_BYTES, min_seconds: float = ROTATE_MIN_SECONDS) -> bool:
    """After a pass: start a new journal once this one is large (the older half is then past any pass)."""
    path, rotated = journal_path(layout), rotated_path(layout)
    try:
        if os.stat(path).st_size <= max_bytes:
            return False
        try:
            if time.time() - os.stat(rotated).st_ctime < min_seconds:  # ctime: when it was renamed there
                return False
        except FileNotFoundError:
            pass
        os.replace(path, rotated)
        return True
    except OSError:
        return False


@dataclass
class Change:
    t: float
    bytes: int
    files: int


class Tally:
    """The journal's changes since a checkpoint (the last pass's start), read incrementally.

    Each file is followed by inode and offset, so a rotation (the current
    file becoming ``.1``) loses and repeats nothing.
    """

    def __init__(self, layout: Layout):
        self.layout = layout
        self.checkpoint: float | None = None
        # (inode, offset read to) of the current journal and of the rotated one, as of the last read.
        self._current: tuple[tuple[int, int], int] | None = None
        self._rotated: tuple[tuple[int, int], int] | None = None
        self._changes: list[Change] = []
        self.bytes = 0
        self.files = 0
        self.changes = 0

    def set_checkpoint(self, started_at: float) -> None:
        if self.checkpoint is not None and started_at <= self.checkpoint:
            return
        self.checkpoint = started_at
        kept = [c for c in self._changes if c.t >= started_at]
        self._changes = kept
        self.bytes = sum(c.bytes for c in kept)
        self.files = sum(c.files for c in kept)
        self.changes = len(kept)

    def read(self) -> None:
        current, rotated = self._current, self._rotated
        # The rotated file is the journal we were reading if a rotation happened since; its inode says so.
        # (Matched by role as well as inode: a new journal may reuse a deleted file's inode number.)
        self._rotated = self._follow(rotated_path(self.layout), (current, rotated))
        moved = current is not None and self._rotated is not None and self._rotated[0] == current[0]
        self._current = self._follow(journal_path(self.layout), () if moved else (current,))

    def _follow(self, path: str, known) -> tuple[tuple[int, int], int] | None:
        try:
            fh = open(path, "rb")
        except OSError:
            return None
        with fh:
            st = os.fstat(fh.fileno())
            ident = (st.st_dev, st.st_ino)
            offset = next((off for k in known if k is not None for i, off in [k] if i == ident), 0)
            if st.st_size < offset:  # not the file we read (replaced in place): start over
                offset = 0
            fh.seek(offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # whole lines only: a writer may be mid-line
        for line in data[:end].splitlines():
            self._take(line)
        return ident, offset + end

    def _take(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
            change = Change(float(rec["t"]), int(rec["bytes"]), int(rec["files"]))
        except (ValueError, KeyError, TypeError):
            return
        if self.checkpoint is not None and change.t < self.checkpoint:
            return
        self._changes.append(change)
        self.bytes += change.bytes
        self.files += change.files
        self.changes += 1
