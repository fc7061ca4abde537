"""``python -m tests.origin --port P``: serve the test origin on 127.0.0.1.

Binds 127.0.0.1 only (there is deliberately no --host). ``--port 0`` lets the
OS pick a free port; either way one line is printed once the socket is
listening: ``s3cache test origin listening on http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from waitress.server import create_server

from .app import OriginApp

HOST = "127.0.0.1"
READY_PREFIX = "s3cache test origin listening on "


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.origin", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Truncate faults make waitress warn "application returned too few bytes"
    # on purpose; keep the log for real problems.
    logging.getLogger("waitress").setLevel(logging.ERROR)

    server = create_server(OriginApp(), host=HOST, port=args.port, threads=args.threads,
                           ident="s3cache-test-origin", channel_timeout=30)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{READY_PREFIX}http://{HOST}:{server.effective_port}", flush=True)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
