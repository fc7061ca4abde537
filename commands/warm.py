"""``s3cache warm URLS_FILE``: fill the cache from a list of (presigned) URLs, ahead of demand.

Each line is an S3 URL as a client would use it (or the same URL with the
proxy's host): only its path and query matter, and the fetch goes to
S3CACHE_UPSTREAM + that raw path and query, exactly as a miss would.  Fills
use the same code and locks as the sidecar, so warming beside a running
stack never fetches an object twice.  Blank lines and ``#`` comments are skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Iterable, TextIO

from tqdm import tqdm

from commands.common import ENV_FILE_HELP, load_config
from s3cache.config import Config, ConfigError
from s3cache.layout import Layout
from s3cache.request_path import BadRequest
from sidecar.fill import Filler, FillResult
from sidecar.miss import plan_resolved

# Failure reasons listed per kind in the summary; the rest are counted.
SHOWN_PER_REASON = 5


@dataclass(frozen=True)
class Job:
    line_no: int
    url: str


def read_urls(lines: Iterable[str]) -> list[Job]:
    jobs = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            jobs.append(Job(n, line))
    return jobs


def warm_one(job: Job, config: Config, layout: Layout, filler: Filler) -> FillResult:
    try:
        plan = plan_resolved("GET", config.addressing.resolve_url(job.url), {}, config, layout)
    except BadRequest as exc:
        return FillResult("failed", f"bad URL ({exc.message})")
    if plan.fill is None:
        return FillResult("failed", f"not cacheable ({plan.why_not})")
    return filler.fill(plan.fill, plan.location)


def warm(jobs: list[Job], config: Config, parallel: int, out: TextIO = sys.stdout, progress: bool = True) -> int:
    layout = Layout(config.dir)
    layout.ensure()
    filler = Filler(layout, workers=1, timeout=config.fill_timeout, max_object_bytes=config.max_object_bytes,
                    min_rate=config.fill_min_rate)
    outcomes: Counter[str] = Counter()
    failures: dict[str, list[int]] = defaultdict(list)
    filled_bytes = 0
    with ThreadPoolExecutor(max_workers=parallel) as pool, \
            tqdm(total=len(jobs), unit="url", disable=not progress, file=sys.stderr) as bar:
        futures = {pool.submit(warm_one, job, config, layout, filler): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # one bad URL must not stop the rest
                result = FillResult("failed", f"internal error: {type(exc).__name__}")
            outcome = {"filled": "filled", "cached": "already cached", "busy": "being filled by another process"}.get(
                result.outcome, "failed")
            outcomes[outcome] += 1
            if outcome == "failed":
                failures[result.reason].append(job.line_no)
            filled_bytes += result.bytes
            bar.update(1)
    filler.shutdown()
    print(f"warm: {len(jobs)} URLs: {outcomes['filled']} filled ({filled_bytes} bytes), "
          f"{outcomes['already cached']} already cached, {outcomes['being filled by another process']} "
          f"being filled by another process, {outcomes['failed']} failed", file=out)
    for reason, line_nos in sorted(failures.items()):
        shown = ", ".join(str(n) for n in line_nos[:SHOWN_PER_REASON])
        more = f" and {len(line_nos) - SHOWN_PER_REASON} more" if len(line_nos) > SHOWN_PER_REASON else ""
        print(f"  failed: {reason}: {len(line_nos)} (lines {shown}{more})", file=out)
    return 1 if outcomes["failed"] else 0


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    if args.parallel < 1:
        raise ConfigError("--parallel: must be at least 1")
    if args.urls_file == "-":
        jobs = read_urls(sys.stdin)
    else:
        with open(args.urls_file, encoding="utf-8") as fh:
            jobs = read_urls(fh)
    return warm(jobs, config, args.parallel, progress=not args.no_progress)


def add_parser(sub) -> argparse.ArgumentParser:
    warm = sub.add_parser("warm", help="fill the cache from a file of (presigned) URLs, one per line")
    warm.add_argument("urls_file", metavar="URLS_FILE", help="one URL per line ('-': standard input)")
    warm.add_argument("--parallel", type=int, default=4, help="fetches at once (default 4)")
    warm.add_argument("--no-progress", action="store_true", help="no progress bar")
    warm.add_argument("--env-file", help=ENV_FILE_HELP)
    return warm
