"""``python -m sidecar``: serve the sidecar app with waitress on S3CACHE_SIDECAR_LISTEN.

With S3CACHE_SIDECAR_WORKERS = 1, this one process does everything; beyond
that it becomes the master of N request workers and a fill process
(``sidecar.processes``), so systemd, compose and the supervisor run it the
same way whatever the setting.
"""

from __future__ import annotations

import logging
import os
import sys

from s3cache import redact
from s3cache.config import Config, ConfigError
from s3cache.layout import Layout
from s3cache.listening import cannot_listen
from sidecar import backchannel, processes, serving
from sidecar.app import create_app

# Threads for everything but streamed misses: hits' access checks, misses, health, status.
BASE_THREADS = 16
# Seconds a stopping process gives requests in flight (below the master's and the supervisor's own limits).
STOP_GRACE = 5.0
FILL_NICENESS = 10


class _ShortQueues(logging.Filter):
    """waitress warns whenever one request waits for a thread. A burst does that for a moment (the
    connections Caddy queued while a sidecar restarted, answered at once): only a queue as deep as the
    thread pool is worth a warning."""

    def __init__(self, threads: int):
        super().__init__()
        self.threads = threads

    def filter(self, record: logging.LogRecord) -> bool:
        depth = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not isinstance(depth, int) or depth >= self.threads


def _serve_options(config: Config) -> dict:
    # Misses answer in microseconds; threads cover slow clients, not slow work.  Streamed
    # misses (and SDK clients' requests, with signing keys: sidecar/sdk.py) do hold a thread each: they get
    # S3CACHE_STREAM_MAX threads on top of the rest.
    threads = BASE_THREADS + (config.stream_max if config.miss == "stream" or config.keys() else 0)
    logging.getLogger("waitress.queue").addFilter(_ShortQueues(threads))
    return {"threads": threads, "ident": "s3cache-sidecar", "channel_timeout": 30,
            "clear_untrusted_proxy_headers": True}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    redact.install()  # no log line hands out a working presigned URL
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"sidecar: configuration error: {exc}", file=sys.stderr)
        return 2
    listen = config.sidecar_listen
    layout = Layout(config.dir)
    layout.ensure()
    log = logging.getLogger("sidecar")
    try:
        http = serving.inherited_socket() or serving.bind(listen)
    except OSError as exc:
        print(f"sidecar: {cannot_listen('S3CACHE_SIDECAR_LISTEN', listen, exc)}", file=sys.stderr)
        return 1
    if config.sidecar_workers == 1:
        app = create_app(config)
        processes.write_state(layout, [os.getpid()], os.getpid())
        log.info("listening on %s, upstream %s, cache %s", listen, config.upstream, config.dir)
        serving.serve_until_stopped(app, http, grace=STOP_GRACE, **_serve_options(config))
        return 0
    name = backchannel.address()
    back = backchannel.listen(name)

    def fill_main() -> None:
        http.close()
        # Fills are background work: when the cores are busy, the kernel runs the request workers first.
        os.nice(FILL_NICENESS)
        backchannel.serve_fills(config, back)

    def worker_main() -> None:
        back.close()
        app = create_app(config, link=backchannel.BackLink(name))
        serving.serve_until_stopped(app, http, grace=STOP_GRACE, **_serve_options(config))

    log.info("listening on %s (%d workers and a fill process), upstream %s, cache %s",
             listen, config.sidecar_workers, config.upstream, config.dir)

    def fill_ready() -> bool:
        try:
            backchannel.BackLink(name).query("fills", 0.5)
            return True
        except OSError:
            return False

    return processes.Master(config, layout, fill_main, worker_main, fill_ready).run()


if __name__ == "__main__":
    sys.exit(main())
