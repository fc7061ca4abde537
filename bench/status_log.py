"""What counting hits from Caddy's access log costs the sidecar (issue 7: the status page and metrics).

Writes N access-log lines shaped like Caddy's (a hit/miss/denied mix, presigned
queries, signatures redacted), then times, in this one run:

  baseline   ``for line in file: json.loads(line)``: the floor for reading JSON lines
  follow     ``s3cache.accesslog.Follower`` + ``sidecar.traffic.Traffic``: what the
             sidecar's background thread does every few seconds

and prints lines per second and the ratio to the baseline.  The figure tells how
much of one core a given request rate costs (e.g. 5,000 req/s at 250,000 lines/s
is 2% of a core), and is what the GIL yielding every 64 lines is measured against.

    .venv/bin/python bench/status_log.py [--lines N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s3cache.layout import Layout  # noqa: E402
from s3cache.accesslog import Follower  # noqa: E402
from sidecar.traffic import Traffic  # noqa: E402


def make_log(path: str, n: int) -> None:
    now = time.time()
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            kind = ("HIT", 200, 65536) if i % 10 < 8 else (("MISS", 307, 0) if i % 10 == 8 else ("DENIED", 403, 243))
            uri = (f"/bench-bucket/dir{i % 97}/object-{i % 5003}.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                   "&X-Amz-Credential=REDACTED&X-Amz-Date=20261124T161814Z&X-Amz-Expires=3600"
                   "&X-Amz-Signature=REDACTED&X-Amz-SignedHeaders=host")
            rec = {"level": "info", "ts": now + i / 1000, "logger": "http.log.access.log0", "msg": "handled request",
                   "request": {"remote_ip": "10.0.0.7", "remote_port": "41654", "client_ip": "10.0.0.7",
                               "proto": "HTTP/1.1", "method": "GET", "host": "cache.example:8080", "uri": uri,
                               "headers": {"User-Agent": ["aws-sdk-go/1.44"], "Accept-Encoding": ["identity"]}},
                   "bytes_read": 0, "user_id": "", "duration": 0.0004, "size": kind[2], "status": kind[1],
                   "resp_headers": {"X-Cache": [kind[0]], "Server": ["Caddy"], "Content-Length": [str(kind[2])],
                                    "Content-Type": ["application/octet-stream"]}}
            fh.write(json.dumps(rec) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3cache-bench-status-") as tmp:
        layout = Layout(tmp)
        layout.ensure()
        log = os.path.join(layout.logs_dir, "access.log")
        make_log(log, args.lines)
        size = os.path.getsize(log)

        t0 = time.perf_counter()
        with open(log, "rb") as fh:
            for line in fh:
                json.loads(line)
        baseline = time.perf_counter() - t0

        traffic = Traffic(layout)
        follower = Follower(log, from_start=True)
        t0 = time.perf_counter()
        n = follower.read(traffic.feed)
        traffic.resolve(now=time.time())
        follow = time.perf_counter() - t0
        assert n == args.lines and traffic.malformed == 0

    print(f"{args.lines} lines, {size / args.lines:.0f} bytes each")
    print(f"baseline json.loads      {args.lines / baseline:>10,.0f} lines/s")
    print(f"follower + counting      {args.lines / follow:>10,.0f} lines/s  ({follow / baseline:.2f}x the baseline's time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
