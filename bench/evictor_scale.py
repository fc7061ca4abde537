"""Scale check for the evictor (issue 3): a pass over N cached files must take <= 30 s and <= 300 MB RSS.

Builds a cache of N objects (sparse files of a few KB, each with a metadata
file, atimes spread over N seconds in an order unrelated to the walk order),
then times, each in a fresh process so peak RSS is its own:

  walk        bare os.scandir walk of objects/ (no stat): the floor for any walk
  walk+stat   the same with one stat per file: the least a pass that sums sizes can do
  (a) idle    a real pass with nothing to evict (usage below LOW)
  (c) list    a real pass between LOW and the cap: it evicts nothing but lists the
              next victims fills make room from (a tenth of the cache), the
              steady state of a cache that fills its S3CACHE_MAX_BYTES
  (b) evict   a real pass that evicts ~10% (the cache just over S3CACHE_MAX_BYTES, LOW 90%)

    .venv/bin/python bench/evictor_scale.py [--files N] [--dir D] [--keep]

Pages are warm (the tree was just built); a cold dentry/inode cache is slower.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PER_DIR = 1000
BUCKET = "bench-bucket"


def build(cache: str, files: int) -> int:
    from s3cache.layout import Layout, ObjectRef

    layout = Layout(cache)
    layout.ensure()
    base_ns = (int(time.time()) - 10 * files - 86400) * 10**9
    total = 0
    made_dirs = set()
    for i in range(files):
        ref = ObjectRef(BUCKET, f"d{i // PER_DIR:05d}/object-{i:07d}.bin")
        obj, meta = str(layout.object_path(ref)), str(layout.meta_path(ref))
        d = os.path.dirname(obj)
        if d not in made_dirs:
            os.makedirs(d, exist_ok=True)
            os.makedirs(os.path.dirname(meta), exist_ok=True)
            made_dirs.add(d)
        size = 1000 + (i % 7) * 500
        fd = os.open(obj, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, size)  # sparse: the bench measures the walk, not the disk
        # A fixed permutation of the file numbers: recency unrelated to walk order.
        atime = base_ns + ((i * 7919) % files) * 10**9
        os.utime(fd, ns=(atime, base_ns))
        os.close(fd)
        os.close(os.open(meta, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        total += size
        if i and i % 200_000 == 0:
            print(f"  built {i} files", flush=True)
    return total


def phase(name: str, cache: str, env: dict[str, str]) -> dict:
    """Runs in a child process: one measurement, printed as JSON."""
    started = time.monotonic()
    out: dict = {}
    if name in ("walk", "walk+stat"):
        with_stat = name == "walk+stat"
        stack, count, size = [os.fsencode(os.path.join(cache, "objects"))], 0, 0
        while stack:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        count += 1
                        if with_stat:
                            size += e.stat(follow_symlinks=False).st_size
        out["files"] = count
    else:
        from evictor.run import run_pass
        from s3cache.config import Config

        summary = run_pass(Config.from_env(env))
        out["line"] = summary.line()
        out["evicted_files"] = summary.evicted_files
    out["seconds"] = round(time.monotonic() - started, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def run_child(name: str, cache: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--phase", name, "--dir", cache],
                          env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1_000_000, help="objects to build (default 1,000,000)")
    parser.add_argument("--dir", help="work directory (default: a new temp dir, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the built tree")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        print(json.dumps(phase(args.phase, args.dir, dict(os.environ))))
        return 0

    work = args.dir or tempfile.mkdtemp(prefix="evictor-bench-")
    cache = os.path.join(work, "cache")
    try:
        t = time.monotonic()
        print(f"building {args.files} objects (+ metadata) in {cache} ...", flush=True)
        total = build(cache, args.files)
        print(f"  built in {time.monotonic() - t:.1f}s, {total} bytes (apparent)", flush=True)

        common = {"S3CACHE_DIR": cache, "S3CACHE_EVICT_INTERVAL": "60"}
        # (a): a cap the cache is far below.  (c): 94.5% of the cap, LOW 85%: lists, removes nothing.
        # (b): just over the cap, LOW 90%: ~10% goes.  (c) before (b), which removes files.
        idle = {**common, "S3CACHE_MAX_BYTES": str(total * 2), "S3CACHE_EVICT_HIGH": "90", "S3CACHE_EVICT_LOW": "85"}
        listing = {**common, "S3CACHE_MAX_BYTES": str(int(total / 0.945)),
                   "S3CACHE_EVICT_HIGH": "90", "S3CACHE_EVICT_LOW": "85"}
        evict = {**common, "S3CACHE_MAX_BYTES": str(total - 1), "S3CACHE_EVICT_HIGH": "95", "S3CACHE_EVICT_LOW": "90"}

        results = {}
        for name, env in (("walk", common), ("walk+stat", common), ("(a) idle", idle), ("(c) list", listing),
                          ("(b) evict", evict)):
            results[name] = r = run_child(name if name.startswith("walk") else "pass", cache, env)
            print(f"{name:10} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mb']:6.1f} MB"
                  + (f"  {r['line']}" if "line" in r else f"  ({r['files']} files)"), flush=True)
        a = results["(a) idle"]["seconds"]
        print(f"(a) / bare walk = {a / max(results['walk']['seconds'], 1e-9):.2f}x, "
              f"(a) / walk+stat = {a / max(results['walk+stat']['seconds'], 1e-9):.2f}x")
        ok = all(r["seconds"] <= 30 and r["peak_rss_mb"] <= 300
                 for k, r in results.items() if k.startswith("("))
        print("within budget (<= 30 s, <= 300 MB per pass)" if ok else "OVER BUDGET")
        return 0 if ok else 1
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
