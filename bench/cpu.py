"""Where a run's CPU went: seconds of CPU per part of the stack (from /proc), and per request.

On a 2-core machine every part (wrk, Caddy, the sidecar, the origin) competes
for the same cores, so a rate alone does not say what bounds it.  CPU
milliseconds per request, per part, do: their sum times the rate is how busy
the cores were, and the largest share is what to cut.
"""

from __future__ import annotations

import json
import os
import resource
from typing import Mapping

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int, missing: float | None = 0.0) -> float | None:
    """User + system CPU seconds of one live process (all its threads); ``missing`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
    except OSError:
        return missing
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (wrk, curl)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stack_pids(stack) -> dict[str, list[int]]:
    """Caddy's pid, and the sidecar's processes (supervisor, request workers, fill process) of a running stack."""
    parts = json.loads((stack.layout.run_dir / "parts.json").read_text())["parts"]
    sidecar = [parts["sidecar"]["pid"]]
    try:
        state = json.loads(stack.layout.sidecar_file.read_text())
        sidecar += list(state.get("worker_pids") or []) + [p for p in [state.get("fill_pid")] if p]
    except (OSError, ValueError):
        pass
    return {"caddy": [parts["caddy"]["pid"]], "sidecar": sidecar}


def snapshot(groups: Mapping[str, list[int]]) -> dict[str, float]:
    return {name: sum(process_cpu(p) for p in pids) for name, pids in groups.items()} | {"wrk": children_cpu()}


def ms_per_request(before: Mapping[str, float], after: Mapping[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request of each part between two snapshots."""
    return {name: 1000 * (after[name] - before[name]) / max(requests, 1) for name in before}
