"""``/_s3cache/metrics``: the collector's snapshot in Prometheus' text exposition format (0.0.4).

Hand-written rather than ``prometheus_client``: every figure already comes
from one snapshot dict (which the status page and ``s3cache stats`` render
too), so the library would only format text, at the price of a runtime
dependency and a custom-collector layer.  The format is small and stable;
the tests parse our output with the reference parser.

Counters run from the sidecar's start.  ``s3cache_bytes_total{source="redirect"}``
is an estimate (see ``sidecar.traffic``); everything else is counted.
"""

from __future__ import annotations

import math

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: list[tuple[dict, float | int | None]]) -> None:
        samples = [(labels, v) for labels, v in samples if v is not None]
        if not samples:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.sample(name, labels, value)

    def sample(self, name: str, labels: dict, value: float | int) -> None:
        text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(snap: dict) -> str:
    out = _Exposition()
    since = snap["since_start"]
    fam = out.family

    fam("s3cache_requests_total", "counter",
        "Client requests answered since the sidecar started, by X-Cache result and method (from Caddy's access log).",
        [({"result": r, "method": m}, n) for r, by_method in since["requests"].items() for m, n in by_method.items()])
    b = since["bytes"]
    fam("s3cache_bytes_total", "counter",
        "Body bytes clients received, by source: cache (exact), stream (from S3 through the sidecar, exact), "
        "redirect (what redirected clients fetched from S3: ESTIMATED from the cached object's size).",
        [({"source": "cache"}, b["cache"]), ({"source": "stream"}, b["streamed"]),
         ({"source": "redirect"}, b["redirected_estimated"])])
    fam("s3cache_redirects_sized_total", "counter",
        "GET redirects whose size is counted in s3cache_bytes_total{source=\"redirect\"}.",
        [({}, b["redirects_sized"])])
    fam("s3cache_redirects_unknown_size_total", "counter",
        "GET redirects whose size could not be known (sub-resources, uncacheable keys, failed fills).",
        [({}, b["redirects_unknown"])])
    fam("s3cache_redirects_pending_size", "gauge",
        "GET redirects waiting for their object to be cached to be sized.", [({}, b["redirects_pending"])])
    fam("s3cache_egress_price_per_gb_dollars", "gauge", "S3CACHE_EGRESS_PRICE_PER_GB (per 2^30 bytes).",
        [({}, snap["price_per_gb"])])
    fam("s3cache_egress_saved_dollars", "gauge",
        "Estimated S3 egress saved since start: gross = bytes served from cache x price; "
        "net = gross minus what the cache downloaded for itself.",
        [({"basis": "gross"}, since["egress_saved_dollars"]), ({"basis": "net"}, since["egress_saved_net_dollars"])])

    adm = snap["admission"]
    fam("s3cache_admission_decisions_total", "counter",
        "Fillable misses by S3CACHE_ADMIT's decision: admitted (filled) or declined (only redirected).",
        [({"decision": "admitted"}, adm["admitted"]), ({"decision": "declined"}, adm["declined"])])
    fam("s3cache_admission_saved_bytes", "gauge",
        "Estimated fill bytes admission did not fetch since start (declined misses x mean fill size).",
        [({}, adm["saved_bytes_estimated"])])
    fam("s3cache_admission_saved_dollars", "gauge",
        "The estimated admission savings at S3CACHE_EGRESS_PRICE_PER_GB.", [({}, adm["saved_dollars_estimated"])])

    misses = snap["sidecar_misses"]
    fam("s3cache_sidecar_misses_total", "counter",
        "Misses the sidecar answered, by whether a fill was queued (fill) or the request is only redirected.",
        [({"action": k}, n) for k, n in misses.items()])

    fills = snap["fills"]
    samples = [({"outcome": "filled", "reason": ""}, fills["filled"])]
    samples += [({"outcome": "failed", "reason": r}, n) for r, n in fills["failed_by_reason"].items()]
    for key, n in fills["other_outcomes"].items():
        outcome, _, reason = key.partition(":")
        samples.append(({"outcome": outcome, "reason": reason}, n))
    fam("s3cache_fills_total", "counter",
        "Fill attempts by outcome: filled, failed (by reason), busy (another fill held the object), "
        "cached (already there), dropped (queue full).", samples)
    fam("s3cache_fills_in_progress", "gauge", "Fills running now.", [({}, fills["in_progress"])])
    fam("s3cache_fill_bytes_total", "counter", "Bytes the sidecar downloaded from S3 into the cache.",
        [({}, fills["bytes"])])
    hist = fills["duration_seconds"]
    out.lines.append("# HELP s3cache_fill_duration_seconds Duration of successful fills.")
    out.lines.append("# TYPE s3cache_fill_duration_seconds histogram")
    for bound, n in hist["buckets"]:
        le = bound if isinstance(bound, str) else _number(float(bound))
        out.sample("s3cache_fill_duration_seconds_bucket", {"le": le}, n)
    out.sample("s3cache_fill_duration_seconds_sum", {}, float(hist["sum"]))
    out.sample("s3cache_fill_duration_seconds_count", {}, hist["count"])

    ev = snap["evictor"]
    fam("s3cache_eviction_passes_total", "counter", "Eviction passes finished since the sidecar started.",
        [({}, ev["since_start"]["passes"])])
    fam("s3cache_evicted_files_total", "counter",
        "Objects evicted since the sidecar started (by passes, and by fills making room from their lists).",
        [({}, ev["since_start"]["evicted_files"])])
    fam("s3cache_evicted_bytes_total", "counter",
        "Bytes evicted since the sidecar started (by passes, and by fills making room from their lists).",
        [({}, ev["since_start"]["evicted_bytes"])])
    fam("s3cache_eviction_last_pass_timestamp_seconds", "gauge", "When the last eviction pass finished.",
        [({}, ev["last_pass_at"])])
    last = ev["recent_passes"][0] if ev["recent_passes"] else None
    if last is not None:
        fam("s3cache_eviction_last_pass_duration_seconds", "gauge", "How long the last eviction pass took.",
            [({}, last.get("duration_seconds"))])

    disk = snap["disk"]
    fam("s3cache_cache_bytes", "gauge",
        "Bytes of cached objects now: the last eviction pass's measure plus fills and minus removals since.",
        [({}, disk["cache_bytes"])])
    fam("s3cache_cache_files", "gauge", "Cached objects now (the last pass's count plus fills, minus removals, since).",
        [({}, disk["cache_files"])])
    fam("s3cache_cache_measured_bytes", "gauge", "Bytes of cached objects as the last eviction pass measured them.",
        [({}, disk.get("measured_bytes"))])
    fam("s3cache_disk_used_bytes", "gauge", "Used bytes of the cache's filesystem (as df counts them).",
        [({}, disk["used_bytes"])])
    fam("s3cache_disk_available_bytes", "gauge", "Available bytes of the cache's filesystem.",
        [({}, disk["available_bytes"])])
    fam("s3cache_usage_percent", "gauge",
        "Usage the evictor acts on: max(disk used %, cache bytes / S3CACHE_MAX_BYTES).", [({}, disk["usage_percent"])])
    fam("s3cache_evict_watermark_percent", "gauge", "S3CACHE_EVICT_HIGH and S3CACHE_EVICT_LOW.",
        [({"mark": "high"}, disk["high"]), ({"mark": "low"}, disk["low"])])
    fam("s3cache_max_bytes", "gauge", "S3CACHE_MAX_BYTES (absent when unset).", [({}, disk["max_bytes"])])

    alog = snap["access_log"]
    fam("s3cache_access_log_lines_total", "counter", "Access-log lines read since the sidecar started.",
        [({}, alog["lines"])])
    fam("s3cache_access_log_malformed_total", "counter", "Access-log lines that could not be read.",
        [({}, alog["malformed"])])
    fam("s3cache_start_time_seconds", "gauge", "When the sidecar started (counters count from here).",
        [({}, snap["started_at"])])
    return out.text()
