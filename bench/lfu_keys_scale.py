"""The lfu order's own cost at scale: ``evictor.policy.frequency_keys`` over a synthetic table of N files.

An eviction pass under S3CACHE_EVICT_POLICY=lfu does what ``bench/evictor_scale.py`` measures
plus this: one sketch lookup per cached file (a pass with nothing to evict skips it).

    .venv/bin/python -m bench.lfu_keys_scale [--files 1000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from array import array

from evictor.policy import frequency_keys
from evictor.scan import FileTable
from s3cache.sketch import FrequencySketch, file_key


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=1_000_000)
    n = p.parse_args().files
    t = FileTable()
    t.dirs, t.dir_start = [b"/c/objects/bkt/a", b"/c/objects/bkt/b"], array("Q", [0, n // 2])
    for i in range(n):
        t.names += b"obj-%07d.bin" % i
        t.name_end.append(len(t.names))
    t.atime_ns = array("q", range(10**18, 10**18 + n))
    with tempfile.TemporaryDirectory() as d:
        sketch = FrequencySketch.open(os.path.join(d, "frequency.sketch"))
        sketch.add(file_key(b"/c/objects", t.path(n - 1)), 3)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        keys = frequency_keys(t, sketch, b"/c/objects")
        seconds = time.perf_counter() - started
        assert keys[n - 1] >> 64 == 3
        sketch.close()
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    print(f"frequency_keys over {n:,} files: {seconds:.1f} s, peak RSS +{grown:.0f} MB")


if __name__ == "__main__":
    main()
