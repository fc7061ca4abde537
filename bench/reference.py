"""The field's reference: the same traces through libCacheSim's policies (PyPI ``libcachesim``, bench-only).

Each request is fed to ``cache.get`` in order (with its next-access time, which
Belady needs); a hit is what ``get`` returns.  Every miss counts one transfer
(the ``stream`` cost); ``redirect`` would add one more per admitted object,
which these caches do not report, so only hit ratio, byte hit ratio and the
stream-mode origin ÷ client bytes are taken from them.  None when the package
is not installed (``bench/requirements.txt`` pins it).
"""

from __future__ import annotations

import math
from typing import Sequence

from bench.cachesim import next_uses

POLICIES = ("LRU", "S3FIFO", "Sieve", "WTinyLFU", "ARC", "BeladySize")
NEVER = 2**62  # libCacheSim's "no next access" is a huge vtime


def available() -> bool:
    try:
        import libcachesim  # noqa: F401
    except ImportError:
        return False
    return True


def simulate(policy: str, trace: Sequence[int], sizes: Sequence[int], capacity: int) -> dict:
    import libcachesim as lcs

    cache = getattr(lcs, policy)(cache_size=capacity)
    nxt = next_uses(trace) if policy.startswith("Belady") else None
    hits = hit_bytes = client = 0
    req = lcs.Request()
    for i, obj in enumerate(trace):
        size = sizes[obj]
        req.obj_id, req.obj_size, req.clock_time = obj, size, i
        if nxt is not None:
            req.next_access_vtime = NEVER if nxt[i] == math.inf else int(nxt[i])
        client += size
        if size > capacity:  # never cached by anyone (and libCacheSim's BeladySize would spin on it)
            continue
        if cache.get(req):
            hits += 1
            hit_bytes += size
    bhr = hit_bytes / client if client else 0.0
    return {"policy": f"libcachesim {policy}", "hit_ratio": hits / len(trace) if trace else 0.0,
            "byte_hit_ratio": bhr, "stream_origin_per_client": 1 - bhr, "redirect_origin_per_client": None}
