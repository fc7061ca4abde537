"""``s3cache purge BUCKET/KEY ...`` and ``s3cache purge --prefix BUCKET/KEYPREFIX``: drop cached objects.

Acts on the cache directory itself, under the entries' own locks
(``s3cache.entries``), so it works with the stack stopped or running: a purge
that meets a running fill of an object waits for it (``--wait``) and removes
what it stored.  Each removal goes to the size journal, which the running
sidecar's live size reads.  Names are raw (not percent-encoded): the bucket,
a slash, the key exactly.
"""

from __future__ import annotations

import argparse
import json
import sys

from s3cache import entries
from commands.common import ENV_FILE_HELP, existing_cache
from s3cache.layout import Layout

NAME = "purge"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="remove cached objects (by BUCKET/KEY, or every one under --prefix)")
    p.add_argument("names", nargs="*", metavar="BUCKET/KEY", help="objects to purge, the key exactly as stored")
    p.add_argument("--prefix", action="append", default=[], metavar="BUCKET/KEYPREFIX",
                   help="purge every cached object whose BUCKET/KEY starts with this (repeatable; the bucket "
                        "and its slash are required)")
    p.add_argument("--wait", type=float, default=entries.DEFAULT_WAIT,
                   help=f"seconds to wait for a running fill of an object (default {entries.DEFAULT_WAIT:g})")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.add_argument("--env-file", help=ENV_FILE_HELP)
    p.set_defaults(func=run)
    return p


def _removals(layout: Layout, args: argparse.Namespace):
    for name in args.names:
        yield entries.remove(layout, entries.parse_name(name), wait=args.wait)
    for prefix in args.prefix:
        yield from entries.purge_prefix(layout, prefix, wait=args.wait)


def _line(r: entries.Removal) -> str:
    name = entries.printable(f"{r.bucket}/{r.key}")
    if r.outcome == "removed":
        return f"removed {name} ({r.bytes} bytes)"
    if r.outcome == "absent":
        return f"not cached {name}" + (f" ({r.detail})" if r.detail else "")
    return f"{r.outcome} {name}: {r.detail}"


def run(args: argparse.Namespace) -> int:
    if not args.names and not args.prefix:
        print("s3cache purge: name objects (BUCKET/KEY ...) or --prefix BUCKET/KEYPREFIX", file=sys.stderr)
        return 2
    try:
        for name in args.names:
            entries.parse_name(name)
        for prefix in args.prefix:
            entries.check_prefix(prefix)
    except ValueError as exc:
        print(f"s3cache purge: {exc}", file=sys.stderr)
        return 2
    if args.wait < 0:
        print("s3cache purge: --wait must not be negative", file=sys.stderr)
        return 2
    layout = existing_cache(args, "purge")
    if layout is None:
        return 1
    done = []
    for removal in _removals(layout, args):
        done.append(removal)
        if not args.json:
            print(_line(removal), flush=True)
    result = entries.summary(done)
    c = result["counts"]
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
    else:
        print(f"purge: {c['removed']} removed ({result['bytes']} bytes), {c['absent']} not cached, "
              f"{c['busy']} busy (a fill still running), {c['error']} failed")
    return 1 if c["busy"] or c["error"] else 0
