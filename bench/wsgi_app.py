"""The sidecar app for WSGI servers other than waitress (bench/wsgi_servers.py): request workers and their fill process.

``python -m sidecar`` runs waitress in a master of its own (``sidecar.processes``).
Another server (gunicorn, granian) brings its own master and forks its own
workers, so to serve the very same app the bench runs the two halves apart:

- ``python -m bench.wsgi_app fill``: the fill process, as the sidecar's master
  forks it (``sidecar.backchannel.serve_fills``, niced as there), listening on
  the channel named by ``BACKCHANNEL_ENV``;
- ``make()``: the app factory each server worker calls, ``create_app(config,
  link=...)`` exactly as a waitress request worker builds it, linked to that
  fill process.

The configuration comes from the environment, as ``sidecar.__main__`` reads it.

Bench-only: nothing at run time imports this.
"""

from __future__ import annotations

import logging
import os
import sys

from s3cache import redact
from s3cache.config import Config
from s3cache.layout import Layout
from sidecar import backchannel
from sidecar.app import create_app

BACKCHANNEL_ENV = "S3CACHE_BENCH_BACKCHANNEL"  # the fill process's abstract socket name, without its leading NUL
FILL_NICENESS = 10  # as sidecar.__main__ nices its fill process


def _channel(name: str | None = None) -> str:
    return "\0" + (name or os.environ[BACKCHANNEL_ENV])


def make():
    """One request worker's app (a WSGI callable), linked to the fill process."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    redact.install()
    config = Config.from_env()
    Layout(config.dir).ensure()
    return create_app(config, link=backchannel.BackLink(_channel()))


def ready(name: str, timeout: float = 0.5) -> bool:
    """Whether the fill process on channel ``name`` answers (the master's test before forking workers)."""
    try:
        backchannel.BackLink(_channel(name)).query("fills", timeout)
        return True
    except OSError:
        return False


def fill_main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    redact.install()
    config = Config.from_env()
    Layout(config.dir).ensure()
    listener = backchannel.listen(_channel())
    os.nice(FILL_NICENESS)
    backchannel.serve_fills(config, listener)
    return 0


if __name__ == "__main__":
    mains = {"fill": fill_main}
    if len(sys.argv) != 2 or sys.argv[1] not in mains:
        sys.exit("usage: python -m bench.wsgi_app fill")
    sys.exit(mains[sys.argv[1]]())
