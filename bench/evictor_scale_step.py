"""Eviction scale (issue 6, item 6): run ``bench/evictor_scale.py`` (owned by the evictor's developer) and read its figures.

Only calls it, with ``--files`` 1,000,000 (quick: 20,000); if the script is
absent the step is skipped.  Its lines look like
``(a) idle   4.30 s  peak RSS   70.0 MB  pass: ...``.
"""

from __future__ import annotations

import re
import subprocess
import sys

from bench.common import ROOT, Context

SCRIPT = ROOT / "bench" / "evictor_scale.py"
LINE = re.compile(r"^(walk\+stat|walk|\(a\) idle|\(b\) evict|\(c\) list)\s+([\d.]+) s\s+peak RSS\s+([\d.]+) MB(.*)$")


def run(ctx: Context) -> dict:
    files = 20_000 if ctx.quick else 1_000_000
    if not SCRIPT.exists():
        return {"skipped": f"{SCRIPT.relative_to(ROOT)} not present"}
    # Without --dir the script builds in its own temp dir and removes it afterwards.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--files", str(files)],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    phases = {}
    for line in proc.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            phases[m.group(1)] = {"seconds": float(m.group(2)), "peak_rss_mb": float(m.group(3)),
                                  "detail": m.group(4).strip()}
    ctx.log(f"evictor scale ({files} files): " + ", ".join(
        f"{k} {v['seconds']:.2f}s/{v['peak_rss_mb']:.0f}MB" for k, v in phases.items()))
    return {"files": files, "returncode": proc.returncode, "phases": phases,
            "within_budget": "within budget" in proc.stdout, "output": proc.stdout[-3000:],
            "stderr": proc.stderr[-2000:]}
