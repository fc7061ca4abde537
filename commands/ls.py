"""``s3cache ls [PREFIX]``: the cached objects, in name order, with size, when stored, last access and S3's ETag.

Reads the cache directory itself (stack running or not).  ``PREFIX`` is
matched against ``BUCKET/KEY`` (raw, not percent-encoded).  ``--json`` prints
one JSON array, written as the walk goes.  The last access is the file's
atime, which the evictor brings up to date from Caddy's access log each pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from s3cache import entries
from commands.common import ENV_FILE_HELP, existing_cache

NAME = "ls"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="list cached objects: size, stored, last access, S3 ETag")
    p.add_argument("prefix", nargs="?", default="", metavar="PREFIX",
                   help="only objects whose BUCKET/KEY starts with this")
    p.add_argument("--json", action="store_true", help="a JSON array of objects")
    p.add_argument("--after", default="", metavar="BUCKET/KEY", help="start after this name (paging)")
    p.add_argument("--limit", type=int, default=None, help="at most this many objects")
    p.add_argument("--env-file", help=ENV_FILE_HELP)
    p.set_defaults(func=run)
    return p


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        print("s3cache ls: --limit must be at least 1", file=sys.stderr)
        return 2
    layout = existing_cache(args, "ls")
    if layout is None:
        return 1
    out = sys.stdout
    n = 0
    if args.json:
        out.write("[")
    else:
        out.write(f"{'SIZE':>12}  {'STORED':<20}  {'LAST ACCESS':<20}  {'ETAG':<36}  OBJECT\n")
    for entry in entries.iter_entries(layout, args.prefix, args.after):
        if args.limit is not None and n >= args.limit:
            break
        if args.json:
            out.write(("\n " if n == 0 else ",\n ") + json.dumps(entry.record(), ensure_ascii=False))
        else:
            out.write(f"{entry.size:>12}  {_when(entry.stored):<20}  {_when(entry.last_access):<20}  "
                      f"{entry.etag or '-':<36}  {entries.printable(entry.name)}\n")
        n += 1
    if args.json:
        out.write("\n]\n" if n else "]\n")
    return 0
