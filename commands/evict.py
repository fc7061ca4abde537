"""``s3cache evict --once [--dry-run]``: one pass from the command line, listing what it removes.

The pass itself is ``evictor.run.run_pass``, the one the evictor's schedule runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from commands.common import ENV_FILE_HELP, load_config
from evictor.run import PassBusy, run_pass
from s3cache.config import Config


def _show(path: bytes, root: bytes) -> str:
    rel = path[len(root) + 1:] if path.startswith(root + b"/") else path
    # Names need not be UTF-8; print them visibly rather than fail on them.
    return rel.decode("utf-8", "backslashreplace")


def run_once(config: Config, dry_run: bool) -> int:
    root = os.fsencode(config.dir)
    verb = "would remove" if dry_run else "removed"

    def on_remove(kind: str, path: bytes, size: int) -> None:
        print(f"{verb} {kind} {_show(path, root)} ({size} bytes)", flush=False)

    try:
        summary = run_pass(config, dry_run=dry_run, on_remove=on_remove)
    except PassBusy as exc:
        print(f"evictor: {exc}; try again later", file=sys.stderr)
        return 1
    print(summary.line(), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    return run_once(load_config(args), dry_run=args.dry_run)


def add_parser(sub) -> argparse.ArgumentParser:
    evict = sub.add_parser("evict", help="run one eviction pass and exit")
    evict.add_argument("--once", action="store_true", required=True, help="one pass, then exit")
    evict.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    evict.add_argument("--env-file", help=ENV_FILE_HELP)
    return evict
