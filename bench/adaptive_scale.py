"""The adaptive policy's own cost per pass: ``evictor.adaptive`` replaying a pass's requests, then its state saved and loaded.

What S3CACHE_EVICT_POLICY=adaptive adds to a pass (``bench/evictor_scale.py``
measures the rest): one hash per request the pass read from the log, and a
shadow update per sampled one.  The shadows hold at most ``MAX_KEYS`` keys, so
the cost follows the log's lines, not the cache's files; the run starts from a
full sample (a long-running cache) over ``--objects`` distinct objects.

    .venv/bin/python -m bench.adaptive_scale [--objects 1000000] [--requests 1000000]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import time

from evictor import adaptive
from evictor.accesslog import Requests
from s3cache.sketch import FrequencySketch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=1_000_000)
    args = p.parse_args()
    rng = random.Random(16)
    size = 100_000
    capacity = args.objects // 10 * size  # the cache holds a tenth of the objects
    sketch = FrequencySketch.in_memory(window=10 * args.objects // 10)
    names = [b"bkt/dir%03d/obj-%07d.bin" % (i % 997, i) for i in range(args.objects)]
    weights = [1 / (r + 1) ** 0.9 for r in range(args.objects)]

    def batch(n: int, t0: float) -> list:
        out = []
        for i, k in enumerate(rng.choices(names, weights=weights, k=n)):
            sketch.add(k)
            out.append((k, size, t0 + i * 1e-3))
        return out

    duel = adaptive.Duel()
    duel.replay(batch(args.requests, 0.0), capacity, sketch, high=0.9, low=0.8, mean_size=size)  # fill the sample
    requests = batch(args.requests, 1e6)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    duel.replay(requests, capacity, sketch, high=0.9, low=0.8, mean_size=size)
    replay = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "adaptive.json")
        started = time.perf_counter()
        adaptive.save(path, duel)
        adaptive.load(path)
        state = time.perf_counter() - started
        state_bytes = os.path.getsize(path)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    # What the pass keeps of its log lines for the replay (``evictor.accesslog.Requests``).
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept = Requests()
    for k, _, t in requests:
        kept.add(("127.0.0.1:8080", "/" + k.decode()), int(t * 1e9))
    kept_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"objects={args.objects} requests_per_pass={args.requests} sampled={duel.sampled} "
          f"rate={duel.rate:.5f} keys={sum(len(s.entries) for s in duel.shadows)}")
    print(f"replay: {replay:.2f} s ({replay / args.requests * 1e6:.2f} µs per request); "
          f"save+load: {state:.3f} s, {state_bytes / 1e6:.2f} MB on disk; peak RSS grew {grew / 1024:.1f} MB; "
          f"the pass's requests kept: {kept_mb:.0f} MB ({len(kept.urls)} distinct URLs)")


if __name__ == "__main__":
    main()
