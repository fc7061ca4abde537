"""``s3cache reload``: ask the running ``s3cache up`` to re-read its env file and apply it, no connection dropped.

The supervisor restarts only what the change needs and reports the result in ``run/parts.json``;
this command signals it (SIGUSR1) and waits for that report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from commands.common import ENV_FILE_HELP, StartError, load_config
from commands.up import running_supervisor
from s3cache.layout import Layout


def run(args: argparse.Namespace) -> int:
    """Ask the running `s3cache up` to re-read its env file; wait for it to say how that went."""
    config = load_config(args)
    layout = Layout(config.dir)
    pid = running_supervisor(layout)

    def reloads() -> tuple[int, dict | None]:
        try:
            status = json.loads(layout.parts_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0, None
        return status.get("reloads", 0), status.get("last_reload")

    before, _ = reloads()
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        count, last = reloads()
        if count > before and last is not None:
            if last.get("ok"):
                print(f"s3cache: reloaded (pid {pid})")
                return 0
            print(f"s3cache: reload failed, still running the previous configuration: {last.get('error')}",
                  file=sys.stderr)
            return 1
        time.sleep(0.1)
    raise StartError(f"s3cache up (pid {pid}) did not report a reload within {args.timeout:g}s; see its log")


def add_parser(sub) -> argparse.ArgumentParser:
    reload = sub.add_parser("reload", help="make the running `s3cache up` apply its changed env file, no connection dropped")
    reload.add_argument("--env-file", help=ENV_FILE_HELP + " (only to find the cache directory)")
    reload.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the result (default 120)")
    return reload
