"""Cache simulations and the egress workload: pure Python, standard library only.

What the egress benchmark compares s3cache against, at the same capacity in bytes:

- ``simulate_lru``: an ideal LRU, evicting the least recently used objects the
  moment a new one would not fit (no watermarks, no delay).
- ``simulate_lru`` with ``high``/``low``: LRU evicting as s3cache's evictor does,
  between watermarks (above ``high`` x capacity, down to ``low`` x capacity),
  but at once after every request instead of every S3CACHE_EVICT_INTERVAL.
- ``simulate_belady``: Belady's MIN generalised to sizes: on a miss, admit the
  object, then evict whatever is requested furthest in the future (possibly
  the newcomer itself, i.e. bypass) until the cache fits.  With equal sizes
  this is the optimum; with varied sizes exact OPT is NP-hard and this is
  the usual "Belady-style" reference, not a proven bound.

Every simulation counts a miss as one transfer from the origin (the object's
size) and starts empty.  ``zipf_lognormal_workload`` builds the trace.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class SimResult:
    policy: str
    capacity: int
    requests: int
    hits: int
    client_bytes: int   # bytes the clients received (every request, hit or miss)
    origin_bytes: int   # bytes fetched from the origin (one transfer per miss)

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return 1 - self.origin_bytes / self.client_bytes if self.client_bytes else 0.0

    @property
    def origin_per_client_byte(self) -> float:
        return self.origin_bytes / self.client_bytes if self.client_bytes else 0.0


def simulate_lru(trace: Sequence[int], sizes: Sequence[int], capacity: int,
                 high: float = 1.0, low: float = 1.0, policy: str = "LRU") -> SimResult:
    """LRU over ``trace`` (object ids into ``sizes``) with ``capacity`` bytes.

    With high == low == 1 it evicts just enough for each newcomer.  Otherwise
    the cache may grow to ``high * capacity``; once above it, the least recently
    used objects go until usage is at most ``low * capacity``.  Objects larger
    than the (high) limit are never admitted.
    """
    if not 0 < low <= high <= 1:
        raise ValueError("need 0 < low <= high <= 1")
    limit, floor = high * capacity, low * capacity
    cache: OrderedDict[int, int] = OrderedDict()
    used = hits = client = origin = 0
    for obj in trace:
        size = sizes[obj]
        client += size
        if obj in cache:
            hits += 1
            cache.move_to_end(obj)
            continue
        origin += size
        if size > limit:
            continue
        cache[obj] = size
        used += size
        if used > limit:
            target = floor if high < 1 else limit
            while used > target:
                _, gone = cache.popitem(last=False)
                used -= gone
    return SimResult(policy, capacity, len(trace), hits, client, origin)


def next_uses(trace: Sequence[int]) -> list[float]:
    """For each position, the position of the next request for the same object (inf: none)."""
    nxt: list[float] = [math.inf] * len(trace)
    seen: dict[int, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        nxt[i] = seen.get(trace[i], math.inf)
        seen[trace[i]] = i
    return nxt


def simulate_belady(trace: Sequence[int], sizes: Sequence[int], capacity: int) -> SimResult:
    """Belady's MIN with sizes: evict (or bypass) what is needed furthest in the future."""
    nxt = next_uses(trace)
    cached: dict[int, float] = {}          # object -> its next use
    heap: list[tuple[float, int]] = []     # (-next use, object); stale entries skipped lazily
    used = hits = client = origin = 0
    for i, obj in enumerate(trace):
        size = sizes[obj]
        client += size
        if obj in cached:
            hits += 1
            if nxt[i] == math.inf:  # never requested again: dead weight, drop it (frees room, costs no hit)
                del cached[obj]
                used -= size
            else:
                cached[obj] = nxt[i]
                heapq.heappush(heap, (-nxt[i], obj))
            continue
        origin += size
        if size > capacity or nxt[i] == math.inf:
            continue  # bypass: it could never be a hit
        cached[obj] = nxt[i]
        used += size
        heapq.heappush(heap, (-nxt[i], obj))
        while used > capacity:
            neg_next, victim = heapq.heappop(heap)
            if cached.get(victim) != -neg_next:
                continue  # stale: the object was requested again (or already evicted)
            del cached[victim]
            used -= sizes[victim]
    return SimResult("Belady", capacity, len(trace), hits, client, origin)


@dataclass(frozen=True)
class Workload:
    sizes: list[int]    # bytes of object i
    trace: list[int]    # object ids, in request order
    alpha: float
    seed: int

    @property
    def working_set_bytes(self) -> int:
        """Bytes of the distinct objects the trace requests."""
        return sum(self.sizes[i] for i in set(self.trace))


def zipf_lognormal_workload(objects: int, requests: int, alpha: float = 0.9, median_bytes: int = 64 * 1024,
                            sigma: float = 1.0, min_bytes: int = 1024, max_bytes: int = 16 << 20,
                            seed: int = 1) -> Workload:
    """Zipf(alpha) popularity over ``objects`` with lognormal sizes (clamped), sampled i.i.d.

    Popularity rank and size are independent: the most requested object is
    not systematically the smallest or the largest.
    """
    rng = random.Random(seed)
    mu = math.log(median_bytes)
    sizes = [min(max_bytes, max(min_bytes, int(rng.lognormvariate(mu, sigma)))) for _ in range(objects)]
    ranks = list(range(objects))
    rng.shuffle(ranks)  # ranks[i]: the object with popularity rank i
    weights = [1 / (r + 1) ** alpha for r in range(objects)]
    trace = rng.choices(ranks, weights=weights, k=requests)
    return Workload(sizes, trace, alpha, seed)
