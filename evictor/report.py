"""What a pass reports: the one log line, ``run/evictor.json`` and the bounded ``run/evictor-passes.jsonl``.

``sidecar/health.py`` reads ``finished_at`` from ``evictor.json``; the status
page will read the last passes from the ``.jsonl``.  Both are replaced
whole (s3cache/atomic.py) so a reader never sees half a file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from s3cache import atomic
from s3cache.layout import Layout

KEEP_PASSES = 100


@dataclass
class Errors:
    """Problems that skipped one file or directory but not the pass: a count and the first few."""

    count: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, what: str, exc: OSError | str) -> None:
        self.count += 1
        if len(self.samples) < 3:
            detail = exc if isinstance(exc, str) else (exc.strerror or str(exc))
            self.samples.append(f"{what}: {detail}")

    def merge(self, other: "Errors") -> None:
        self.count += other.count
        self.samples = (self.samples + other.samples)[:3]


@dataclass
class PassSummary:
    started_at: float = 0.0
    finished_at: float = 0.0
    duration_seconds: float = 0.0
    dry_run: bool = False
    scanned_files: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    evicted_files: int = 0
    evicted_bytes: int = 0
    usage_percent_before: float = 0.0
    usage_percent_after: float = 0.0
    high: float = 0.0
    low: float = 0.0
    max_bytes: int | None = None
    target_reached: bool = True   # False: even the whole cache could not bring usage below LOW
    refused_bytes: int = 0        # the largest fill refused since the last pass: room was made for it too
    next_victims: int = 0         # objects listed for fills to remove next (s3cache.victims)
    fill_evicted_files: int = 0   # objects fills removed from the last pass's list, to make room
    fill_evicted_bytes: int = 0
    log_lines: int = 0            # access-log lines read this pass
    log_hits: int = 0             # distinct objects those lines hit
    atimes_refreshed: int = 0     # of which the atime was moved forward
    temp_removed: int = 0
    orphan_meta_removed: int = 0
    grants_removed: int = 0
    dirs_removed: int = 0
    policy: str = ""              # the order (and, adaptive, the admission) this pass ran
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one line per pass; key=value so it greps and parses."""
        verb = "would evict" if self.dry_run else "evicted"
        parts = [
            f"{'dry-run ' if self.dry_run else ''}pass:",
            f"scanned={self.scanned_files} files",
            f"bytes_before={self.bytes_before}",
            f"bytes_after={self.bytes_after}",
            f"{verb.replace(' ', '_')}={self.evicted_files} files/{self.evicted_bytes} bytes",
            f"usage={self.usage_percent_before:.2f}%->{self.usage_percent_after:.2f}%"
            f" (high={self.high:g}% low={self.low:g}%)",
            f"duration={self.duration_seconds:.2f}s",
            f"log_hits={self.log_hits} refreshed={self.atimes_refreshed}",
            f"temp_removed={self.temp_removed} orphan_meta_removed={self.orphan_meta_removed}",
        ]
        if self.refused_bytes:
            parts.append(f"refused_fill={self.refused_bytes} bytes")
        if self.fill_evicted_files:
            parts.append(f"fill_evicted={self.fill_evicted_files} files/{self.fill_evicted_bytes} bytes")
        if self.next_victims:
            parts.append(f"next_victims={self.next_victims} files")
        if not self.target_reached:
            parts.append("target=unreachable (the disk is full of more than the cache)")
        if self.errors:
            parts.append(f"errors={self.errors} (first: {self.error_samples[0]})")
        return " ".join(parts)

    def record(self) -> dict:
        return asdict(self)


def write_pass(layout: Layout, summary: PassSummary) -> None:
    """``run/evictor.json`` (the last pass) and the last ``KEEP_PASSES`` lines of ``run/evictor-passes.jsonl``."""
    record = json.dumps(summary.record(), ensure_ascii=True)
    atomic.write(layout.evictor_status_file, record + "\n")
    passes = str(layout.evictor_passes_file)
    try:
        with open(passes, encoding="utf-8", errors="replace") as fh:
            lines = [ln for ln in fh.read().splitlines() if ln.strip()]
    except FileNotFoundError:
        lines = []
    lines.append(record)
    atomic.write(passes, "\n".join(lines[-KEEP_PASSES:]) + "\n")
