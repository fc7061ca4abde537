"""``python -m evictor``: the scheduled process ``s3cache up`` runs beside Caddy and the sidecar.

A pass at start, then one every ``S3CACHE_EVICT_INTERVAL`` seconds (the
``schedule`` package; the next run is timed from the end of the previous one,
so slow passes never pile up).  One line per pass on stdout.

A fill refused by the cap or by the disk's high watermark (recorded in
``s3cache.ledger``) brings the next pass forward to the next tick: fills stop
at those limits, and every one refused until a pass makes room is an
object not cached, so the room is made at once rather than up to an interval
later.  Such passes are at least ``REFUSAL_GAP`` seconds, and as long as the
last one took, apart (the evictor is busy at most half the time); after one
that freed nothing (the refused fill would not fit below LOW however empty
the cache), refusals wait for the schedule.

SIGTERM/SIGINT stop it cleanly: a pass in progress ends at its next directory
(every removal so far is complete, and the access-log cursor only ever lags,
never skips).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback

import schedule

from evictor.report import PassSummary
from evictor.run import PassAborted, PassBusy, run_pass
from s3cache.config import Config, ConfigError
from s3cache.layout import Layout
from s3cache.ledger import CacheSize
from s3cache.redact import redact

# Seconds at least between the end of a pass and a pass a refused fill brings forward.
REFUSAL_GAP = 1.0
TICK = 1.0  # seconds between looks at the schedule and at the ledger's refusals


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"evictor: configuration error: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def request_stop(signum, _frame) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)

    def one_pass() -> PassSummary | None:
        try:
            summary = run_pass(config, should_stop=stop.is_set)
        except PassAborted:
            return None
        except PassBusy as exc:
            print(redact(f"skipped: {exc}"), flush=True)
            return None
        except Exception:  # a bad pass must not end the process; the next one may succeed
            # An access-log line may carry a URL (Caddy redacts it; this is the second lock).
            print(redact("pass failed:\n" + traceback.format_exc().rstrip()), flush=True)
            return None
        print(summary.line(), flush=True)
        return summary

    print(f"evicting {config.dir} every {config.evict_interval:g}s above {config.evict_high:g}% "
          f"down to {config.evict_low:g}%"
          + (f", cap {config.max_bytes} bytes" if config.max_bytes else ""), flush=True)
    ledger = CacheSize(Layout(config.dir).cache_bytes_file)
    # The last pass, however it was started: its monotonic end and duration; whether a refusal brought it
    # forward; and whether that was fruitless (it freed nothing: the refused fill cannot fit below LOW
    # however empty the cache), after which refusals wait for the schedule instead of walking the cache
    # again for each.
    last = {"end": 0.0, "took": 0.0, "forward": False, "fruitless": False}

    def timed_pass() -> None:
        started = time.monotonic()
        summary = one_pass()
        last["end"] = time.monotonic()
        last["took"] = last["end"] - started
        last["fruitless"] = last["forward"] and (summary is None or not summary.evicted_files)
        last["forward"] = False

    scheduler = schedule.Scheduler()
    job = scheduler.every(config.evict_interval).seconds.do(timed_pass)
    scheduler.run_all()  # the first pass now, not one interval from now
    while not stop.is_set():
        scheduler.run_pending()
        if not last["fruitless"] and time.monotonic() - last["end"] >= max(REFUSAL_GAP, last["took"]) \
                and ledger.read().refused:
            last["forward"] = True
            job.run()  # a refused fill waits for room: the pass now, the schedule timed from its end
        idle = scheduler.idle_seconds
        stop.wait(min(max(idle if idle is not None else TICK, 0.01), TICK))
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
