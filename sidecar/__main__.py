"""``python -m sidecar``: serve the sidecar app with waitress on S3CACHE_SIDECAR_LISTEN."""

from __future__ import annotations

import logging
import signal
import sys

from waitress import serve

from s3cache.config import Config, ConfigError
from sidecar.app import create_app


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
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
    # Misses answer in microseconds; threads cover slow clients, not slow work.
    serve(app, host=listen.host, port=listen.port, threads=16, ident="s3cache-sidecar",
          channel_timeout=30, clear_untrusted_proxy_headers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
