"""The bench's request traces (issue 16), each generated from a fixed seed: same seed, same trace.

- ``zipf-0.7``, ``zipf-0.9``, ``zipf-1.1``: Zipf popularity with lognormal sizes (``bench.cachesim``);
- ``shifting``: a recency-heavy trace, Zipf 0.9 over a working set that moves to fresh
  objects every ``phase`` requests (what was hot stops being asked for);
- ``scan``: Zipf 0.9 with one-off sequential scans of never-repeated objects mixed in
  (a quarter of the requests), the pattern that pollutes a plain LRU.
"""

from __future__ import annotations

import math
import random

from bench.cachesim import Workload, zipf_lognormal_workload

NAMES = ("zipf-0.7", "zipf-0.9", "zipf-1.1", "shifting", "scan")


def _sizes(rng: random.Random, n: int, median: int = 64 * 1024, sigma: float = 1.0) -> list[int]:
    mu = math.log(median)
    return [min(16 << 20, max(1024, int(rng.lognormvariate(mu, sigma)))) for _ in range(n)]


def shifting(objects: int, requests: int, phases: int = 4, seed: int = 16) -> Workload:
    rng = random.Random(seed)
    per_phase = objects // phases
    sizes = _sizes(rng, per_phase * phases)
    weights = [1 / (r + 1) ** 0.9 for r in range(per_phase)]
    trace: list[int] = []
    for p in range(phases):
        ranks = list(range(p * per_phase, (p + 1) * per_phase))
        rng.shuffle(ranks)
        trace += rng.choices(ranks, weights=weights, k=requests // phases)
    return Workload(sizes, trace, 0.9, seed)


def scan(objects: int, requests: int, scan_share: float = 0.25, scan_len: int = 50, seed: int = 17) -> Workload:
    base = zipf_lognormal_workload(objects, requests, alpha=0.9, seed=seed)
    rng = random.Random(seed + 1)
    sizes, trace, out = list(base.sizes), base.trace, []
    scans = int(requests * scan_share / (1 - scan_share) / scan_len)
    starts = set(rng.sample(range(len(trace)), scans))
    for i, obj in enumerate(trace):
        if i in starts:
            first = len(sizes)
            sizes += _sizes(rng, scan_len)
            out += range(first, first + scan_len)
        out.append(obj)
    return Workload(sizes, out, 0.9, seed)


def make(name: str, objects: int, requests: int) -> Workload:
    if name.startswith("zipf-"):
        return zipf_lognormal_workload(objects, requests, alpha=float(name[5:]), seed=6)
    if name == "shifting":
        return shifting(objects, requests)
    if name == "scan":
        return scan(objects, requests)
    raise ValueError(f"unknown trace {name!r}")
