"""Admission and eviction (issue 16): s3cache's policies against LRU and libCacheSim, simulated and on the real stack.

1. Simulated, on every trace of ``bench.traces`` (fixed seeds) at 1%, 10% and
   30% of the working set's bytes: s3cache's choices (``bench.policysim``,
   which runs ``s3cache.sketch`` and ``evictor.adaptive`` themselves) —
   ``lru+first`` is what s3cache did before admission, ``lfu+tinylfu`` the
   defaults before the adaptive policy, ``adaptive+tinylfu`` the defaults — beside libCacheSim's LRU,
   S3-FIFO, SIEVE, W-TinyLFU, ARC and Belady (``bench.reference``) when installed.
2. The real stack (``bench.egress.run_mode``: Caddy, sidecar, evictor, an
   nginx origin counting bytes) on every trace at 10% and 30%, and Zipf 0.9 at
   1% too (``REAL``; at 1% misses are paced so slowly that a run takes its whole
   budget): the defaults in ``redirect`` and ``stream`` mode, and
   ``S3CACHE_EVICT_POLICY=lru S3CACHE_ADMIT=first`` in ``redirect`` mode as the
   baseline of the same run.

The targets it checks (issue 16), on the simulated rows and again on the real
stack's: redirect-mode origin ≤ 1.0× client bytes on the Zipf traces; byte hit
ratio ≥ LRU + 5 points on Zipf 0.9 at 10%, ≥ LRU − 1 point on the shifting and
scan traces; stream within 1 point of the best simulated policy (Belady
excluded: it knows the future), on the requests the real run got through.
"""

from __future__ import annotations

from bench import egress, policysim, reference, traces
from bench.common import Context

CAPACITIES = (0.01, 0.10, 0.30)
# What the real stack replays: trace -> capacities.
REAL = {name: ((0.01, 0.10, 0.30) if name == "zipf-0.9" else (0.10, 0.30)) for name in traces.NAMES}
OURS = ("lru+first", "lfu+first", "lru+tinylfu", "lfu+tinylfu", "adaptive+tinylfu")
DEFAULT = "adaptive+tinylfu"
BASELINE = "lru+first"


def simulated(objects: int, requests: int, with_reference: bool = True) -> list[dict]:
    rows = []
    for name in traces.NAMES:
        w = traces.make(name, objects, requests)
        for frac in CAPACITIES:
            cap = int(w.working_set_bytes * frac)
            for pol in OURS:
                ev, _, ad = pol.partition("+")
                r = policysim.simulate(w.trace, w.sizes, cap, evict=ev, admit=ad)
                rows.append({"trace": name, "capacity": frac, "policy": pol, "hit_ratio": r.hit_ratio,
                             "byte_hit_ratio": r.byte_hit_ratio,
                             "redirect_origin_per_client": r.redirect_origin_per_client,
                             "stream_origin_per_client": r.stream_origin_per_client})
            if with_reference and reference.available():
                for pol in reference.POLICIES:
                    rows.append({"trace": name, "capacity": frac,
                                 **reference.simulate(pol, w.trace, w.sizes, cap)})
    for r in rows:
        r["dollars_saved_per_tb_stream"] = egress.dollars_saved_per_tb(r["stream_origin_per_client"])
        r["dollars_saved_per_tb_redirect"] = (None if r["redirect_origin_per_client"] is None else
                                              egress.dollars_saved_per_tb(r["redirect_origin_per_client"]))
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """Issue 16's targets, checked on the simulated rows."""
    def get(trace, cap, pol):
        return next(r for r in rows if (r["trace"], r["capacity"], r["policy"]) == (trace, cap, pol))
    out = []
    for t in ("zipf-0.7", "zipf-0.9", "zipf-1.1"):
        for c in CAPACITIES:
            v = get(t, c, DEFAULT)["redirect_origin_per_client"]
            out.append({"target": f"{t} at {c:.0%}: redirect origin ÷ client ≤ 1.0", "value": f"{v:.3f}",
                        "met": v <= 1.0})
    d, b = get("zipf-0.9", 0.10, DEFAULT)["byte_hit_ratio"], get("zipf-0.9", 0.10, BASELINE)["byte_hit_ratio"]
    out.append({"target": "zipf-0.9 at 10%: byte hit ratio ≥ LRU + 0.05", "value": f"{d:.3f} vs {b:.3f}",
                "met": d >= b + 0.05})
    for t in ("shifting", "scan"):
        for c in CAPACITIES:
            d, b = get(t, c, DEFAULT)["byte_hit_ratio"], get(t, c, BASELINE)["byte_hit_ratio"]
            out.append({"target": f"{t} at {c:.0%}: byte hit ratio ≥ LRU − 0.01", "value": f"{d:.3f} vs {b:.3f}",
                        "met": d >= b - 0.01})
    for t in traces.NAMES:
        for c in CAPACITIES:
            best = max((r for r in rows if r["trace"] == t and r["capacity"] == c and "Belady" not in r["policy"]),
                       key=lambda r: r["byte_hit_ratio"])
            d = get(t, c, DEFAULT)["byte_hit_ratio"]
            out.append({"target": f"{t} at {c:.0%}: stream byte hit ratio within 0.01 of the best ({best['policy']})",
                        "value": f"{d:.3f} vs {best['byte_hit_ratio']:.3f}", "met": d >= best["byte_hit_ratio"] - 0.01})
    return out


def best_simulated(trace: str, objects: int, requests: int, capacity: int, executed: int,
                   with_reference: bool = True) -> tuple[str, float]:
    """(policy, byte hit ratio) of the best simulated policy, Belady excluded, on the trace's first ``executed`` requests."""
    w = traces.make(trace, objects, requests)
    prefix = w.trace[:executed]
    best = ("", -1.0)
    for pol in OURS:
        ev, _, ad = pol.partition("+")
        bhr = policysim.simulate(prefix, w.sizes, capacity, evict=ev, admit=ad).byte_hit_ratio
        best = max(best, (pol, bhr), key=lambda b: b[1])
    if with_reference and reference.available():
        for pol in reference.POLICIES:
            if not pol.startswith("Belady"):
                r = reference.simulate(pol, prefix, w.sizes, capacity)
                best = max(best, (r["policy"], r["byte_hit_ratio"]), key=lambda b: b[1])
    return best


def real_targets(rows: list[dict], best) -> list[dict]:
    """Issue 16's targets on the real stack's rows; ``best(trace, capacity_bytes, executed)`` -> (policy, byte hit ratio)."""
    def get(trace, cap, pol, mode):
        return next((r for r in rows if (r["trace"], r["capacity"], r["policy"], r["mode"]) == (trace, cap, pol, mode)),
                    None)
    out = []
    for trace, cap in dict.fromkeys((r["trace"], r["capacity"]) for r in rows):
        red, stream = get(trace, cap, DEFAULT, "redirect"), get(trace, cap, DEFAULT, "stream")
        lru = get(trace, cap, BASELINE, "redirect")
        where = f"{trace} at {cap:.0%}"
        if red is not None and trace.startswith("zipf"):
            v = red["origin_per_client"]
            out.append({"target": f"{where}: redirect origin ÷ client ≤ 1.0", "value": f"{v:.3f}", "met": v <= 1.0})
        if red is not None and lru is not None:
            d, b = red["byte_hit_ratio"], lru["byte_hit_ratio"]
            if (trace, cap) == ("zipf-0.9", 0.10):
                out.append({"target": f"{where}: byte hit ratio ≥ LRU + 0.05", "value": f"{d:.3f} vs {b:.3f}",
                            "met": d >= b + 0.05})
            elif trace in ("shifting", "scan"):
                out.append({"target": f"{where}: byte hit ratio ≥ LRU − 0.01", "value": f"{d:.3f} vs {b:.3f}",
                            "met": d >= b - 0.01})
        if stream is not None:
            pol, b = best(trace, stream["capacity_bytes"], stream["requests"])
            d = stream["byte_hit_ratio"]
            out.append({"target": f"{where}: stream byte hit ratio within 0.01 of the best simulated ({pol}, "
                                  f"first {stream['requests']:,} requests)",
                        "value": f"{d:.3f} vs {b:.3f}", "met": d >= b - 0.01})
    return out


LFU_BEFORE = ("redirect", "lfu+tinylfu", {"S3CACHE_EVICT_POLICY": "lfu", "S3CACHE_ADMIT": "tinylfu"})


def real(ctx: Context, objects: int, requests: int, budget: float, overshoot: float,
         capacities: tuple[float, ...] = CAPACITIES, trace: str = "zipf-0.9",
         extra: tuple[tuple[str, str, dict], ...] = ()) -> list[dict]:
    workload = traces.make(trace, objects, requests)
    origin = egress.start_origin(ctx, f"policies/{trace}", workload)
    runs = [("redirect", DEFAULT, {}), ("stream", DEFAULT, {}),
            ("redirect", BASELINE, {"S3CACHE_EVICT_POLICY": "lru", "S3CACHE_ADMIT": "first"}), *extra]
    rows = []
    try:
        for frac in capacities:
            cap = int(workload.working_set_bytes * frac)
            for mode, pol, env in runs:
                label = f"{trace}-{frac:.0%}-{mode}-{pol}".replace("%", "pc").replace("+", "-")
                r = egress.run_mode(ctx, origin, workload, cap, mode, budget, overshoot, label=label, **env)
                rows.append({"trace": trace, "capacity": frac, "policy": pol, "capacity_bytes": cap, **r})
    finally:
        origin.stop()
    return rows


def run(ctx: Context) -> dict:
    objects, requests_n = (200, 1000) if ctx.quick else (2000, 20000)
    rows = simulated(objects, requests_n, with_reference=not ctx.quick or reference.available())
    for t in targets(rows):
        ctx.log(f"policies sim: {t['target']}: {t['value']} {'met' if t['met'] else 'NOT MET'}")
    budget = 10.0 if ctx.quick else 240.0
    overshoot = 0.5 if ctx.quick else 0.2
    real_rows = []
    for trace, caps in REAL.items():
        if ctx.quick and trace != "zipf-0.9":
            continue
        # On the recency-heavy trace the adaptive policy is for, the old default beside the new and LRU too.
        extra = (LFU_BEFORE,) if trace == "shifting" else ()
        real_rows += real(ctx, objects, requests_n, budget, overshoot, capacities=caps, trace=trace, extra=extra)
    real_checked = real_targets(real_rows, lambda t, cap, n: best_simulated(t, objects, requests_n, cap, n))
    for t in real_checked:
        ctx.log(f"policies real: {t['target']}: {t['value']} {'met' if t['met'] else 'NOT MET'}")
    return {"objects": objects, "requests": requests_n, "sim": rows, "targets": targets(rows), "real": real_rows,
            "real_targets": real_checked, "libcachesim": reference.available()}
