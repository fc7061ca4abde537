"""Run every benchmark, write the report, print the summary table.  Entry point: ``bench/run``.

    .venv/bin/python bench/suite.py [--quick] [--only hit,access,miss,stampede,egress,policies,evictor_scale,wsgi,hitprof] [--out DIR]

``hitprof`` (bench/hit_profile.py: a CPU profile of the hit path and an ablation table) runs only when
named in ``--only``.

A benchmark that fails is reported as failed (with its traceback in the
report) and the others still run; the exit status is 1 then.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (access_modes, egress, evictor_scale_step, hit_path, hit_profile, miss_path, policies,  # noqa: E402
                   report, stampede, wsgi_servers)
from bench.common import ROOT, Context, machine_info  # noqa: E402

BENCHMARKS = {
    "hit": hit_path.run,
    "access": access_modes.run,
    "miss": miss_path.run,
    "stampede": stampede.run,
    "egress": egress.run,
    "policies": policies.run,
    "evictor_scale": evictor_scale_step.run,
    "wsgi": wsgi_servers.run,
    "hitprof": hit_profile.run,
}
# Diagnostics run only when named in --only.
OPTIONAL = {"hitprof"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs (a smoke test, < 2 minutes)")
    parser.add_argument("--only", help="comma-separated subset of: " + ",".join(BENCHMARKS))
    parser.add_argument("--out", help="report directory (default bench/results, or bench/results/quick with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory (logs, caches)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other benchmarks' results already in the report directory's latest.json "
                             "(each benchmark's own baselines are always of its own run; the report says when each ran)")
    args = parser.parse_args(argv)

    selected = ([b for b in BENCHMARKS if b not in OPTIONAL] if not args.only
                else [s.strip() for s in args.only.split(",") if s.strip()])
    unknown = [s for s in selected if s not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / ("quick" if args.quick else "")
    workdir = Path(tempfile.mkdtemp(prefix="s3cache-bench-"))
    ctx = Context(workdir, quick=args.quick)
    results: dict = {"meta": {**machine_info(), "quick": args.quick, "benchmarks": selected}}
    if args.merge and (out / "latest.json").is_file():
        earlier = json.loads((out / "latest.json").read_text())
        results |= {name: res for name, res in earlier.items() if name in BENCHMARKS and name not in selected}
        results["meta"]["benchmarks"] = [b for b in BENCHMARKS if b in results]
    failed = []
    started = time.monotonic()
    try:
        for name in selected:
            ctx.log(f"== {name}")
            t = time.monotonic()
            ran = {"ran_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": os.getloadavg()[0]}
            try:
                results[name] = BENCHMARKS[name](ctx)
            except Exception:
                failed.append(name)
                results[name] = {"error": traceback.format_exc()}
                ctx.log(f"{name} FAILED:\n{results[name]['error']}")
            results[name]["seconds"] = round(time.monotonic() - t, 1)
            results[name] |= ran
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    md = report.write(results, out)
    print()
    print(report.summary_text(results))
    print()
    print(f"report: {md.relative_to(ROOT) if md.is_relative_to(ROOT) else md} "
          f"({results['meta']['seconds']:.0f} s{'; FAILED: ' + ', '.join(failed) if failed else ''})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
