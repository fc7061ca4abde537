"""Origin bytes per first request: S3CACHE_MISS=redirect vs stream, measured in one run.

Each object is requested once through the proxy (the client follows the
redirect, as curl -L or a browser would), then once more (a hit).  The test
origin counts every body byte it sends.  Baseline: the object's own size,
i.e. what one plain download from S3 costs.

    .venv/bin/python bench/miss_modes.py [--objects 20] [--size 1048576]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.origin.fixture import start_origin  # noqa: E402
from tests.stack import Stack, raw_request  # noqa: E402


def run_mode(origin, workdir: Path, mode: str, keys: list[str], bucket: str) -> dict:
    stack = Stack(workdir / mode, origin.url, S3CACHE_ACCESS="open", S3CACHE_MISS=mode).start()
    try:
        origin.reset()
        started = time.monotonic()
        client_bytes = 0
        for key in keys:
            url = origin.presign(bucket, key)
            r = stack.get(stack.proxied(url))
            if r.status_code == 307:  # the client follows the redirect to S3
                r = raw_request("GET", r.headers["Location"])
            client_bytes += len(r.content)
        for key in keys:
            stack.wait_cached(bucket, key, timeout=60)
        first_pass = time.monotonic() - started
        for key in keys:
            client_bytes += len(stack.get(stack.proxied(origin.presign(bucket, key))).content)
        origin_bytes = origin.stats()["body_bytes"]
        return {"mode": mode, "origin_bytes": origin_bytes, "client_bytes": client_bytes, "seconds": first_pass}
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3cache-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "origin").mkdir()
        origin = start_origin(tmp / "origin")
        try:
            bucket = "bench-miss-modes"
            origin.s3().create_bucket(Bucket=bucket)
            keys = [f"obj-{i}.bin" for i in range(args.objects)]
            for key in keys:
                origin.s3().put_object(Bucket=bucket, Key=key, Body=os.urandom(args.size))
            baseline = args.objects * args.size
            print(f"{args.objects} objects x {args.size} bytes; each requested twice (miss, then hit)")
            print(f"{'mode':<10}{'origin bytes':>16}{'x one download':>16}{'client bytes':>16}{'first pass s':>14}")
            for mode in ("redirect", "stream"):
                r = run_mode(origin, tmp, mode, keys, bucket)
                print(f"{r['mode']:<10}{r['origin_bytes']:>16}{r['origin_bytes'] / baseline:>16.2f}"
                      f"{r['client_bytes']:>16}{r['seconds']:>14.2f}")
        finally:
            origin.stop()


if __name__ == "__main__":
    main()
