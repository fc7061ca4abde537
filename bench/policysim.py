"""s3cache's admission and eviction choices simulated on a trace, the way the real stack applies them.

One request at a time; the cache may grow to ``high`` x capacity and is then
cut to ``low`` x capacity in the eviction order.  By default both are the
capacity itself, as s3cache runs S3CACHE_MAX_BYTES: a fill that would cross
the cap removes objects in the order the last pass chose until it fits (the
evictor's list of next victims, ``s3cache.victims``; ordered afresh at every
fill here, at most one pass old in the real stack).  Lower values model a cap
cut in batches from HIGH to LOW (what passes alone did before fills made
room).  The frequency is ``s3cache.sketch`` itself, counting every request;
the order is ``evictor.policy``'s:

- eviction ``lru``: least recently used first;
- eviction ``lfu``: lowest sketch estimate first (zero for an object not asked for since the
  aging before last), least recently used among equals;
- eviction ``adaptive``: ``evictor.adaptive.Duel`` itself, fed at each pass the requests since
  the last one (as the evictor replays the access log, sizes known only for what is cached),
  chooses ``lfu`` or ``lru``; while it chooses ``lru+first`` the published admission boundary is
  0 (``tinylfu`` admits every miss), as the evictor publishes it.  A pass comes every
  ``pass_every`` requests here (200 by default; the bench's real stack passes every 0.25 s);
- admission ``first``: every miss fills;
- admission ``count:N``: a miss fills once the object was asked for N times (sketch estimate);
- admission ``tinylfu``: a miss fills only when the object is asked for more often than the
  objects fills removed before the last pass (the pass publishes their highest estimate; 0
  before any removal), the rule ``sidecar.admission`` applies.

Costs, per miss: ``stream`` fetches the object once (whether or not it is kept);
``redirect`` fetches it once for the client, and once more when it is filled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from evictor import adaptive
from s3cache.config import Config
from s3cache.sketch import WINDOW_MIN, WINDOW_PER_OBJECT, FrequencySketch


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    requests: int
    hits: int
    client_bytes: int
    miss_bytes: int     # bytes of the misses (what the clients fetched from the origin)
    fill_bytes: int     # bytes filled (admitted misses)
    misses: int
    fills: int

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return 1 - self.miss_bytes / self.client_bytes if self.client_bytes else 0.0

    @property
    def redirect_origin_per_client(self) -> float:
        return (self.miss_bytes + self.fill_bytes) / self.client_bytes if self.client_bytes else 0.0

    @property
    def stream_origin_per_client(self) -> float:
        return self.miss_bytes / self.client_bytes if self.client_bytes else 0.0


# Requests between the evictor's scheduled passes: each publishes the admission boundary from what fills
# removed since the last, and (``adaptive``) chooses the order the next fills take victims in.
PASS_EVERY = 200


def shipped_watermarks() -> tuple[float, float]:
    """S3CACHE_EVICT_HIGH and S3CACHE_EVICT_LOW as shipped (their defaults), as fractions."""
    defaults = Config.from_env({})
    return defaults.evict_high / 100, defaults.evict_low / 100


def _key(obj: int) -> bytes:
    return b"o%d" % obj


def simulate(trace: Sequence[int], sizes: Sequence[int], capacity: int, *, evict: str = "lru",
             admit: str = "first", high: float = 1.0, low: float = 1.0, window: int | None = None,
             duel: adaptive.Duel | None = None, pass_every: int | None = PASS_EVERY) -> PolicyResult:
    # As the evictor sets it: ten times the objects the cache holds (TinyLFU's sample size).
    distinct = set(trace)
    mean = sum(sizes[o] for o in distinct) / len(distinct)
    now = [0]  # the sketch's clock is the request number here (it is wall time in the evictor)
    sketch = FrequencySketch.in_memory(window or max(WINDOW_MIN, int(WINDOW_PER_OBJECT * capacity / mean)),
                                       clock=lambda: now[0])
    if evict == "adaptive" and duel is None:
        duel = adaptive.Duel()
    pending: list[tuple[bytes, int | None, float]] = []  # requests since the last pass (the access log's lines)
    limit, floor = high * capacity, low * capacity
    duel_high, duel_low = shipped_watermarks()  # the evictor hands the shadows its configured watermarks
    cache: dict[int, int] = {}  # object -> last access (request number)
    used = hits = client = miss_bytes = fill_bytes = misses = fills = 0
    boundary = 0
    count_n = int(admit.partition(":")[2] or 0) if admit.startswith("count") else 0
    chosen_admit = admit

    def replay() -> str:
        # What the evictor knows at a pass: a request's size if the object is in the cache now.
        nonlocal chosen_admit
        requests = [(k, sizes[int(k[1:])] if int(k[1:]) in cache else None, at) for k, _, at in pending]
        order_by, chosen_admit = duel.replay(requests, capacity, sketch, high=duel_high, low=duel_low,
                                             mean_size=used // len(cache) if cache else int(mean))
        pending.clear()
        return order_by

    order_by = evict if duel is None else duel.choice()[0]
    taken_top = taken = 0  # what fills removed since the last pass: its highest estimate, how many
    for t, obj in enumerate(trace):
        if pass_every and t and t % pass_every == 0:  # a scheduled pass
            if duel is not None:
                order_by = replay()  # a pass chooses the order fills then take victims in
            if taken:  # what newcomers must beat: the most asked-for among what fills removed
                boundary, taken_top, taken = taken_top, 0, 0
            if duel is not None and chosen_admit == "first":
                boundary = 0  # recency runs: tinylfu admits every miss (evictor.adaptive)
        now[0] = t
        size = sizes[obj]
        client += size
        before = sketch.additions
        est = sketch.add(_key(obj))
        if sketch.additions < before:  # the sketch just aged: so does the admission boundary
            boundary >>= 1
        if duel is not None:
            pending.append((_key(obj), None, t))
        if obj in cache:
            hits += 1
            cache[obj] = t
            continue
        misses += 1
        miss_bytes += size
        if admit == "first":
            ok = True
        elif admit == "tinylfu":
            ok = est > boundary
        elif count_n:
            ok = est >= count_n
        else:
            raise ValueError(admit)
        if not ok or size > limit:
            continue
        fills += 1
        fill_bytes += size
        cache[obj] = t
        used += size
        if used > limit:
            prev_aging = sketch.aged_at[1]
            if order_by == "lru":
                order = sorted(cache, key=cache.__getitem__)
                est_of = None
            elif order_by == "lfu":
                # Not asked for since the aging before last: its count is history, not frequency.
                est_of = {o: sketch.estimate(_key(o)) if cache[o] >= prev_aging else 0 for o in cache}
                order = sorted(cache, key=lambda o: (est_of[o], cache[o]))
            else:
                raise ValueError(order_by)
            for victim in order:
                if used <= floor:
                    break
                used -= sizes[victim]
                del cache[victim]
                taken += 1
                taken_top = max(taken_top, est_of[victim] if est_of else sketch.estimate(_key(victim)))
    return PolicyResult(f"{evict}+{admit}", len(trace), hits, client, miss_bytes, fill_bytes, misses, fills)


def main() -> None:
    import argparse

    from bench import traces
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=2000)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--policies", default="lru+first,lru+count:2,lru+tinylfu,lfu+first,lfu+tinylfu,adaptive+tinylfu")
    args = p.parse_args()
    print("trace      cap  policy            hit   bhr   redirect stream")
    for name in traces.NAMES:
        w = traces.make(name, args.objects, args.requests)
        for frac in (0.01, 0.10, 0.30):
            cap = int(w.working_set_bytes * frac)
            for pol in args.policies.split(","):
                ev, _, ad = pol.partition("+")
                r = simulate(w.trace, w.sizes, cap, evict=ev, admit=ad)
                print(f"{name:<10} {frac:>4.0%} {pol:<16} {r.hit_ratio:.3f} {r.byte_hit_ratio:.3f} "
                      f"{r.redirect_origin_per_client:.3f}    {r.stream_origin_per_client:.3f}", flush=True)


if __name__ == "__main__":
    main()
