"""Follow Caddy's access log from where the sidecar started: complete lines only, across rolls.

The status page and metrics count hits from the access log Caddy writes
anyway, so nothing on the hit path changes for them.  This module only reads
it, incrementally: each ``read`` hands over the lines written since the last.

- It starts at the log's current end (figures are "since the sidecar
  started"), or at 0 when the log does not exist yet.
- It keeps the file open.  Caddy rolls ``access.log`` by renaming it, so the
  open descriptor still reads the rest of the old file after a roll; then the
  new ``access.log`` is read from its start.  Rolled files written completely
  between two reads (several rolls at once) are read whole, found by name and
  modification time.
- A file that shrank under the same inode (copy-truncate) is read from 0.
- A line is handed over only once its newline is written; a line longer than
  ``MAX_LINE`` is not one of Caddy's and is skipped (and counted).
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable

CHUNK = 1 << 20
MAX_LINE = 1 << 20
_ROLLED = re.compile(r"^access-.+\.log$")  # roll_uncompressed in the Caddyfile: plain files

LineHandler = Callable[[bytes], None]


class LogFollower:
    def __init__(self, path: os.PathLike | str, *, from_start: bool = False,
                 clock: Callable[[], float] = time.time):
        self.path = os.fspath(path)
        self._clock = clock
        self._fh = None            # binary file object on the inode being read
        self._ident: tuple[int, int] | None = None
        self._offset = 0           # bytes of the open file consumed (complete lines + carry)
        self._carry = b""
        self._skipping = False     # inside an overlong line (or a partial one at start)
        self._live_since = clock()  # when the open file was last seen to be the live access.log
        self.rolls = 0
        self.truncations = 0
        self.skipped_lines = 0
        self.missed_files_read = 0
        if not from_start:
            self._open(at_end=True)

    # -- public -----------------------------------------------------------------------

    def read(self, handle: LineHandler) -> int:
        """Feed every complete line written since the last call to ``handle``; return how many."""
        n = 0
        if self._fh is None and not self._open(at_end=False):
            return 0
        now = self._clock()
        current = self._stat_path()
        if current is not None and current == self._ident:
            size = os.fstat(self._fh.fileno()).st_size
            if size < self._offset:  # truncated in place: whatever is there now is new
                self.truncations += 1
                self._fh.seek(0)
                self._offset, self._carry, self._skipping = 0, b"", False
            n += self._drain(handle, final=False)
            self._live_since = now
            return n
        # Rolled (or removed): the old file is complete; finish it, then catch up.
        n += self._drain(handle, final=True)
        old_ident, seen_live = self._ident, self._live_since
        self._close()
        self.rolls += 1
        n += self._read_missed(handle, exclude={old_ident, current}, after=seen_live)
        if current is not None and self._open(at_end=False):
            n += self._drain(handle, final=False)
            self._live_since = now
        return n

    def close(self) -> None:
        self._close()

    # -- files ------------------------------------------------------------------------

    def _stat_path(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _open(self, at_end: bool) -> bool:
        try:
            fh = open(self.path, "rb")
        except OSError:
            return False
        st = os.fstat(fh.fileno())
        self._fh, self._ident = fh, (st.st_dev, st.st_ino)
        self._carry, self._skipping, self._offset = b"", False, 0
        if at_end and st.st_size:
            fh.seek(st.st_size - 1)
            # Mid-line at start: that line began before us; skip to its end.
            self._skipping = fh.read(1) != b"\n"
            self._offset = st.st_size
        return True

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh, self._ident = None, None

    def _read_missed(self, handle: LineHandler, exclude: set, after: float) -> int:
        """Rolled files written whole since ``after`` that we never had open (several rolls between reads)."""
        directory = os.path.dirname(self.path) or "."
        found = []
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if not _ROLLED.match(entry.name):
                        continue
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) not in exclude and st.st_mtime > after:
                        found.append(entry.path)
        except OSError:
            return 0
        n = 0
        for path in sorted(found):  # names carry the roll time: oldest first
            try:
                fh = open(path, "rb")
            except OSError:
                continue
            self.missed_files_read += 1
            saved = (self._fh, self._offset, self._carry, self._skipping)
            self._fh, self._offset, self._carry, self._skipping = fh, 0, b"", False
            try:
                n += self._drain(handle, final=True)
            finally:
                fh.close()
                self._fh, self._offset, self._carry, self._skipping = saved
        return n

    # -- lines ------------------------------------------------------------------------

    def _drain(self, handle: LineHandler, final: bool) -> int:
        n = 0
        while True:
            chunk = self._fh.read(CHUNK)
            if not chunk:
                break
            self._offset += len(chunk)
            data = self._carry + chunk if self._carry else chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                self._carry = data
                if len(self._carry) > MAX_LINE:
                    self._carry = b""
                    if not self._skipping:
                        self.skipped_lines += 1
                    self._skipping = True
                continue
            lines = data[:cut].split(b"\n")
            self._carry = data[cut + 1:]
            if self._skipping:  # the tail of a line we do not hand over
                lines = lines[1:]
                self._skipping = False
            for line in lines:
                if line.strip():
                    handle(line)
                    n += 1
        if final and self._carry and not self._skipping:
            handle(self._carry)  # a rolled file's last line needs no newline
            n += 1
        if final:
            self._carry, self._skipping = b"", False
        return n
