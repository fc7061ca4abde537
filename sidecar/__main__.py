"""``python -m sidecar``: serve the sidecar app with waitress on S3CACHE_SIDECAR_LISTEN."""

from __future__ import annotations

import logging
import signal
import sys

from waitress import serve

from s3cache import redact
from s3cache.config import Config, ConfigError
from sidecar.app import create_app

# Threads for everything but streamed misses: hits' access checks, misses, health, status.
BASE_THREADS = 16


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    redact.install()  # no log line hands out a working presigned URL
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"sidecar: configuration error: {exc}", file=sys.stderr)
        return 2
    # As PID 1 in a container, Python ignores SIGTERM unless told otherwise: stop cleanly on it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = create_app(config)
    listen = config.sidecar_listen
    logging.getLogger("sidecar").info("listening on %s, upstream %s, cache %s", listen, config.upstream, config.dir)
    # Misses answer in microseconds; threads cover slow clients, not slow work.  Streamed
    # misses (and SDK clients' requests, with signing keys: sidecar/sdk.py) do hold a thread each: they get
    # S3CACHE_STREAM_MAX threads on top of the rest.
    threads = BASE_THREADS + (config.stream_max if config.miss == "stream" or config.keys() else 0)
    serve(app, host=listen.host, port=listen.port, threads=threads, ident="s3cache-sidecar",
          channel_timeout=30, clear_untrusted_proxy_headers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
