"""Whether a miss fills the cache (S3CACHE_ADMIT): a fill is worth its bytes only if the object is read again.

Every fillable miss is counted in the shared frequency sketch
(``s3cache.sketch``, ``run/frequency.sketch``: a file mapped by every
sidecar process and by the evictor, which adds the hits it replays from
Caddy's log, so the counts survive restarts and could serve several worker
processes).  Then, by policy:

- ``first``: every miss fills (what s3cache did before admission existed);
- ``count:N``: the object was asked for N times lately (the sketch's estimate);
- ``tinylfu``: the object is asked for more often than the objects the last
  eviction pass removed (the boundary the evictor writes into the sketch,
  halved as the counts age).  Until a pass has had to evict, every miss fills.
  Under S3CACHE_EVICT_POLICY=adaptive the evictor publishes 0 while recency
  wins (``evictor.adaptive``): then every miss fills.

A declined miss is only redirected (in ``stream`` mode too: the client's one
download from S3 costs the same either way).  The counters feed the status
page and metrics; the bytes a declined fill did not fetch are estimated from
the mean size of the fills made, since a redirected object's size is not known.
"""

from __future__ import annotations

import logging
import os
import threading

from s3cache.layout import Layout, ObjectRef
from s3cache.sketch import FrequencySketch, file_key

log = logging.getLogger("sidecar.admission")


class Admission:
    def __init__(self, policy: str, layout: Layout):
        self.policy = policy
        self.layout = layout
        self._objects_dir = os.fsencode(layout.objects_dir)
        self._lock = threading.Lock()
        self.admitted = 0
        self.declined = 0
        try:
            self.sketch: FrequencySketch | None = FrequencySketch.open(layout.sketch_file)
        except (OSError, ValueError) as exc:  # no sketch: every miss fills, as before admission existed
            log.warning("frequency sketch unavailable (%s): every miss fills", exc)
            self.sketch = None
        self._count = int(policy.partition(":")[2]) if policy.startswith("count:") else 0

    def admit(self, ref: ObjectRef) -> bool:
        """Count this miss for ``ref`` and say whether it fills."""
        ok = True
        if self.sketch is not None:
            key = file_key(self._objects_dir, os.fsencode(str(self.layout.object_path(ref))))
            with self._lock:  # threads of one process never lose a count; processes may, rarely
                est = self.sketch.add(key)
                boundary = self.sketch.boundary
            if self.policy == "tinylfu":
                ok = est > boundary
            elif self._count:
                ok = est >= self._count
        self.count(ok)
        return ok

    def count(self, ok: bool) -> None:
        """Count one decision (the fill process counts those its request workers report)."""
        with self._lock:
            if ok:
                self.admitted += 1
            else:
                self.declined += 1

    def stats(self) -> dict:
        with self._lock:
            return {"policy": self.policy, "admitted": self.admitted, "declined": self.declined,
                    "boundary": self.sketch.boundary if self.sketch is not None else None}
