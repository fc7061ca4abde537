"""Watermark bands on the real stack: how much of the cap the evictor keeps in use, against how fast it can turn over.

Between passes the cache holds between S3CACHE_EVICT_LOW and S3CACHE_EVICT_HIGH
of its cap: a narrow band keeps more of the paid-for space in use, but each pass
frees only the band, so a working set that moves on faster than that waits for
room (its fills are refused until a pass makes it).  This replays, through the
real stack in ``stream`` mode (``bench.egress.run_mode``: the evictor every
0.25 s, misses paced to a fifth of the cap per interval), a stable Zipf 0.9
trace at 10% and the shifting trace at 30% of the working set, once per band,
and prints each run's byte hit ratio.

    PYTHONPATH=. .venv/bin/python bench/watermark_bands.py [--bands 90/80,95/92,95/85]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import egress, traces
from bench.common import Context

POINTS = (("zipf-0.9", 0.10), ("shifting", 0.30))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bands", default="90/80,95/92,95/85", help="HIGH/LOW percent pairs, comma-separated")
    p.add_argument("--objects", type=int, default=2000)
    p.add_argument("--requests", type=int, default=20000)
    args = p.parse_args()
    bands = [tuple(b.split("/")) for b in args.bands.split(",")]
    ctx = Context(Path(tempfile.mkdtemp(prefix="s3cache-bands-")), quick=False)
    print("trace      capacity  band   byte hit ratio  origin/client  fills")
    for trace, frac in POINTS:
        w = traces.make(trace, args.objects, args.requests)
        origin = egress.start_origin(ctx, trace, w)
        try:
            for high, low in bands:
                r = egress.run_mode(ctx, origin, w, int(w.working_set_bytes * frac), "stream", 240.0, 0.2,
                                    label=f"{trace}-{high}-{low}", S3CACHE_EVICT_HIGH=high, S3CACHE_EVICT_LOW=low)
                print(f"{trace:<10} {frac:>8.0%}  {high}/{low}  {r['byte_hit_ratio']:14.3f}  "
                      f"{r['origin_per_client']:13.3f}  {r.get('origin_fill_gets')}", flush=True)
        finally:
            origin.stop()


if __name__ == "__main__":
    main()
