"""Writing a file so that a reader sees the old content or the new, never half: the one rule every writer follows.

The rule: the whole content goes into a temp file on the same filesystem as
the target, then one rename puts it in the target's place (a rename within a
filesystem is atomic: an open of the path finds the old inode or the new one).
If anything fails on the way, the temp file is removed, the target is left as
it was, and the error goes to the caller, who decides whether it matters.

The temp file lies beside the target (``<target>.<pid>.<thread>.tmp``, a name
no other writer uses at the same time) unless the caller names one, e.g. in
the cache's ``tmp/`` when a name beside the target could be another S3 key's
(``meta/`` mirrors the keys).  A caller that names the temp file must own that
name while it writes (s3cache/metadata.py holds the object's fill lock).

No fsync: what is written this way is state a crash may lose and the next
write redoes (the parts' status, the evictor's position and passes, object
metadata).  A fill's body is another matter: sidecar/fill.py syncs it and
renames it into ``objects/`` itself, as its protocol says.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Callable

PathLike = os.PathLike | str
Install = Callable[[str, str], None]


def write(path: PathLike, text: str | bytes, *, temp: PathLike | None = None, install: Install = os.replace) -> None:
    """Replace ``path`` with ``text`` (str as UTF-8, or bytes) whole or not at all; no temp file is left behind.

    ``install(temp, path)`` is the rename (``os.replace`` unless the caller
    needs its parents made first); whatever it or the write raises is raised.
    """
    path = os.fspath(path)
    tmp = os.fspath(temp) if temp is not None else f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with (open(tmp, "wb") if isinstance(text, bytes) else open(tmp, "w", encoding="utf-8")) as fh:
            fh.write(text)
        install(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: PathLike) -> dict | None:
    """A JSON object written by ``write``: None when it is missing, unreadable, or not an object."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
