"""What every benchmark shares: the run's settings (quick or full), logging, statistics, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.wrk import WrkSettings  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass
class Context:
    """One run of the suite: where to put temporary files, how long to measure, how to log."""

    workdir: Path
    quick: bool
    started: float = field(default_factory=time.monotonic)

    @property
    def wrk(self) -> WrkSettings:
        # The same wrk settings for every hit-path server and access mode.
        return WrkSettings(threads=2, connections=32, duration=1 if self.quick else 8)

    @property
    def rounds(self) -> int:
        """Interleaved rounds per measurement (each server/mode once per round, in a rotated order)."""
        return 1 if self.quick else 3

    def dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)


def rotated(items: Sequence, round_no: int) -> list:
    """``items`` rotated by ``round_no``: each one takes every position in turn (interleaving against drift)."""
    k = round_no % len(items)
    return list(items[k:]) + list(items[:k])


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n:.0f} B"


def _first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "caddy": _first_line([str(ROOT / ".venv/bin/caddy"), "version"]).split(" ")[0],
        "nginx": _first_line(["nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": _first_line(["wrk", "-v"]).split(" [")[0],
        "load_before": os.getloadavg()[0],
    }
