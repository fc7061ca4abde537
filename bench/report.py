"""Turn the suite's results into ``latest.md``, ``latest.json`` and PNG plots, and the summary table.

Every figure is a ratio against a baseline measured in the same run, next to
the raw numbers.  Plots need matplotlib (``bench/requirements.txt``); without
it the report is written without them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import wsgi_servers
from bench.common import human_bytes

# One colour per server/mode in every plot.
COLORS = {"s3cache": "tab:blue", "caddy": "tab:orange", "nginx": "tab:green", "nginx-nopush-off": "tab:olive",
          "s3cache-nolog": "tab:purple", "open": "tab:blue", "verify": "tab:cyan", "revalidate": "tab:red"}


def _x(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}×"


def _num(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _status(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**not met**")


CPU_NOTE = ("CPU ms/request: CPU time each part used during the run (from /proc; the sidecar is its supervisor, "
            "request workers and fill process together) divided by the requests wrk completed. On 2 shared cores "
            "their sum bounds the rate: 2,000 ms of CPU per second ÷ (sum ms per request) is the most the machine "
            "can answer, whatever the latency.")


def _cpu(row: dict, parts: tuple[str, ...]) -> str:
    cpu = row.get("cpu_ms")
    if not cpu:
        return "n/a"
    return " / ".join(f"{cpu[p]:.2f}" if p in cpu else "–" for p in parts) + f" (sum {sum(cpu.values()):.2f})"


def _hit_row(results: dict, size: str, server: str) -> dict | None:
    for row in results.get("hit", {}).get("table", []):
        if row["size"] == size and row["server"] == server:
            return row
    return None


def summary_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(measure, result, target, status) for the summary table."""
    rows = []
    hit = results.get("hit", {})
    if "table" in hit:
        for size in ("4 KiB", "64 KiB", "1 MiB", "16 MiB"):
            r = _hit_row(results, size, "s3cache")
            target = hit["targets"].get(size)
            rows.append((f"Hit {size}: s3cache ÷ bare Caddy (req/s)",
                         f"{_x(r['vs_caddy'])} ({_num(r['req_per_s'])} vs {_num(_hit_row(results, size, 'caddy')['req_per_s'])} req/s)",
                         f"≥ {target}×" if target else "—",
                         _status(r["vs_caddy"] >= target) if target else "—"))
        for size in ("4 KiB", "64 KiB", "1 MiB", "16 MiB"):
            r = _hit_row(results, size, "s3cache")
            rows.append((f"Hit {size}: s3cache ÷ nginx proxy_cache (better config)", _x(r["vs_nginx"]), "—", "—"))
    elif "error" in hit:
        rows.append(("Hit path", "failed: see report", "", ""))
    acc = results.get("access", {})
    if "table" in acc:
        for row in acc["table"]:
            if row["mode"] == "open":
                continue
            targets = {(t["mode"], t["size"]): t["target"] for t in acc.get("targets", [])}
            target = targets.get((row["mode"], row["size"]))
            if target is None and (row["mode"], row["size"]) == ("verify-checked", "1 MiB"):
                target = acc["target_verify_1mib"]  # issue 4's, for a hit the sidecar checks
            rows.append((f"Access {row['mode']} ÷ open, {row['size']} hits",
                         f"{_x(row['vs_open'])} ({_num(row['req_per_s'])} req/s, p99 {row['p99_ms']:.1f} ms)",
                         f"≥ {target}×" if target else "—", _status(row["vs_open"] >= target) if target else "—"))
        for row in acc.get("revalidate_origin_per_window", []):
            most = acc["max_origin_per_window"]
            rows.append((f"Access revalidate, {row['size']}: origin requests per URL per "
                         f"{acc['grant_ttl']} s grant window",
                         f"{row['max']:.2f} at most (per round: {', '.join(f'{v:.2f}' for v in row['runs'])})",
                         f"≤ {most}", _status(row["max"] <= most)))
    miss = results.get("miss", {})
    if "redirects" in miss:
        red = miss["redirects"]
        side = red["table"][0]
        t = red.get("targets")
        rows.append((f"Miss redirect, {red['connections']} clients: p50 / p99",
                     f"{side['p50_ms']:.1f} / {side['p99_ms']:.1f} ms ({_x(red['p50_vs_caddy'], 1)} / "
                     f"{_x(red['p99_vs_caddy'], 1)} Caddy's own redirect; {_num(side['req_per_s'])} req/s)",
                     f"p99 < {t['p99_ms']} ms" if t else "—", _status(side["p99_ms"] < t["p99_ms"]) if t else "—"))
        if t:
            rows.append((f"Miss redirects/s, {red['connections']} clients ÷ Caddy's own redirect",
                         f"{_x(red['rps_vs_caddy'], 3)} ({_num(side['req_per_s'])} req/s)",
                         f"≥ {_x(t['rps_vs_caddy'], 3)} (3× the {t['before_req_per_s']:,} req/s of before, "
                         "as a share of Caddy's)", _status(red["rps_vs_caddy"] >= t["rps_vs_caddy"])))
            rows.append(("Miss redirects/s with fills queued ÷ without (a flood of fills)",
                         _x(red["rps_vs_no_fill"]), f"≥ {t['vs_no_fill']}× (not halved)",
                         _status(red["rps_vs_no_fill"] >= t["vs_no_fill"])))
        for row in red["table"][1:]:
            rows.append((f"  same, {row['kind']}", f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f} ms "
                         f"({_num(row['req_per_s'])} req/s)", "—", "—"))
        if "rps_vs_one_process" in red:
            rows.append((f"  {red['workers']} sidecar workers ÷ one process, miss redirects/s",
                         _x(red["rps_vs_one_process"]), "—", "—"))
    if "fill" in miss:
        fill = miss["fill"]
        fill_row = next(r for r in fill["table"] if r["kind"] == "s3cache fill")
        md5_row = next(r for r in fill["table"] if r["kind"] == "s3cache fill (MD5 ETag)")
        for label, ratios, row in (("", fill["ratio"], fill_row), (" (MD5 ETag)", fill["ratio_md5"], md5_row)):
            main = ratios["curl > file + fsync"]
            rows.append((f"Fill {human_bytes(fill['bytes'])}{label} ÷ curl (to file + fsync)",
                         f"{_x(main)} ({row['mb_per_s']:.0f} MB/s; ÷ curl to /dev/null {_x(ratios['curl > /dev/null'])}, "
                         f"÷ curl to file {_x(ratios['curl > file'])})", f"≥ {fill['target']}×",
                         _status(main >= fill["target"])))
    st = results.get("stampede", {})
    if "trials" in st:
        modes = list(dict.fromkeys(t["mode"] for t in st["trials"]))
        counts = "; ".join(f"{m}: " + ", ".join(str(t["origin_gets"]) for t in st["trials"] if t["mode"] == m)
                           for m in modes)
        rows.append((f"Stampede: {st['trials'][0]['clients']} concurrent first requests → origin GETs",
                     counts, "1 each", _status(st["ok"])))
    eg = results.get("egress", {})
    if "real" in eg:
        for real in eg["real"]:
            rows.append((f"Egress, cache = 10% of working set: s3cache ({real['mode']}) origin ÷ client bytes",
                         f"{real['origin_per_client']:.2f} (byte hit ratio {real['byte_hit_ratio']:.2f}; "
                         f"${real['dollars_saved_per_tb']:.1f} saved per TB served)", "—", "—"))
        for sim in eg["sim"]:
            rows.append((f"Egress, same trace, simulated {sim['policy']}",
                         f"{sim['origin_per_client']:.2f} (byte hit ratio {sim['byte_hit_ratio']:.2f}; "
                         f"${sim['dollars_saved_per_tb']:.1f} per TB)", "—", "—"))
    po = results.get("policies", {})
    for key, where in (("targets", "simulated"), ("real_targets", "real stack")):
        checked = po.get(key)
        if checked:
            missed = [t for t in checked if not t["met"]]
            rows.append((f"Issue 16 targets, {where} (cost, byte hit ratio, stream vs best policy)",
                         f"{len(checked) - len(missed)} of {len(checked)} met"
                         + "".join(f"; not met: {t['target']} ({t['value']})" for t in missed),
                         f"all {len(checked)}", _status(not missed)))
    if "kinds" in results.get("wsgi", {}):
        rows += wsgi_servers.summary_rows(results["wsgi"])
    elif "error" in results.get("wsgi", {}):
        rows.append(("WSGI server comparison", "failed: see report", "", ""))
    ev = results.get("evictor_scale", {})
    if ev.get("phases"):
        for name in ("(a) idle", "(c) list", "(b) evict"):
            p = ev["phases"].get(name)
            if p:
                rows.append((f"Evictor pass over {ev['files']:,} files, {name[4:]}",
                             f"{p['seconds']:.1f} s, {p['peak_rss_mb']:.0f} MB RSS", "≤ 30 s, ≤ 300 MB",
                             _status(p["seconds"] <= 30 and p["peak_rss_mb"] <= 300)))
    elif ev.get("skipped"):
        rows.append(("Evictor scale", f"skipped: {ev['skipped']}", "", ""))
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(results: dict) -> str:
    return markdown_table(["Measure", "Result", "Target", "Status"], [list(r) for r in summary_rows(results)])


def summary_text(results: dict) -> str:
    rows = summary_rows(results)
    widths = [max(len(r[i]) for r in rows + [("Measure", "Result", "Target", "Status")]) for i in range(4)]
    widths[1] = min(widths[1], 100)
    out = []
    for r in [("Measure", "Result", "Target", "Status")] + rows:
        out.append("  ".join(c.replace("**", "").ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def _runs_line(results: dict) -> str:
    """When each benchmark ran, and how loaded the machine was as it started (other work shares it)."""
    runs = [f"{name} {res['ran_at'][11:]} (load {res['load_before']:.1f}, {res.get('seconds', 0):.0f} s)"
            for name, res in results.items() if name != "meta" and isinstance(res, dict) and "ran_at" in res]
    return ("Runs (start, load average then, duration): " + "; ".join(runs) + ".") if runs else ""


def _machine_line(meta: dict) -> str:
    return (f"{meta['date']}; {meta['nproc']} cores ({meta['cpu']}), {meta['memory_gib']} GiB RAM, Linux "
            f"{meta['kernel']}; Caddy {meta['caddy']}, nginx {meta['nginx']}, {meta['wrk']}, Python {meta['python']}; "
            f"load average before the run {meta['load_before']:.2f}")


def full_markdown(results: dict, plots: list[str]) -> str:
    meta = results["meta"]
    parts = [f"# s3cache benchmarks ({'quick' if meta['quick'] else 'full'} run)", "",
             f"Machine: {_machine_line(meta)}.", "",
             "Everything ran on this one machine over 127.0.0.1: wrk, the servers and the origins share "
             f"its {meta['nproc']} cores, and other work on a shared machine adds noise. So every figure is "
             "judged as a ratio against a baseline measured in the same run, with runs interleaved "
             "(each server/mode once per round, order rotated). Re-run: `bench/run` (`--quick` for a smoke run).",
             "", _runs_line(results), "", "## Summary", "", summary_markdown(results), ""]
    hit = results.get("hit", {})
    if "table" in hit:
        s = hit["settings"]
        parts += ["## Hit path", "",
                  f"wrk -t{s['threads']} -c{s['connections']} -d{s['duration']}s, {s['rounds']} interleaved round(s); "
                  "medians; ratios are medians of per-round pairs. Every URL carries a SigV4-style presigned query. "
                  "`s3cache`: S3CACHE_ACCESS=open with its access log on (as shipped). `caddy`: "
                  "`caddy file-server` on the same cache directory, no access log. `nginx`: Debian's nginx "
                  "`proxy_cache` hits (access log on; Debian's `sendfile on; tcp_nopush on`); `nginx-nopush-off`: "
                  "the same with `tcp_nopush off` (on loopback, nopush stalls ~64 KiB responses ~40 ms on the "
                  "client's delayed ACK); \"vs nginx\" uses the faster of the two per round. `s3cache-nolog`: "
                  "diagnostic, the shipped Caddyfile minus its access log.", "",
                  markdown_table(["size", "server", "req/s", "MB/s", "p50 ms", "p99 ms", "vs caddy", "vs nginx",
                                  "errors", "req/s per round"],
                                 [[r["size"], r["server"], _num(r["req_per_s"]), _num(r["mb_per_s"]),
                                   f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", _x(r["vs_caddy"]), _x(r["vs_nginx"]),
                                   r["errors"], ", ".join(_num(v) for v in r["runs"])] for r in hit["table"]]), ""]
        ev = hit.get("evictor_after_runs")
        if ev:
            parts += [f"After these runs one evictor pass (`s3cache evict --once`) read the access log they wrote: "
                      f"{ev['log_lines']:,} lines, {ev['log_files_bytes'] / 2**20:.0f} MiB "
                      f"({ev['bytes_per_line'] or 0:.0f} bytes per hit), in {ev['seconds']:.1f} s "
                      f"({ev['cpu_seconds']:.1f} s CPU): about {ev['log_lines'] / max(ev['seconds'], 1e-9):,.0f} "
                      "log lines per second of pass.", ""]
    elif "error" in hit:
        parts += ["## Hit path", "", "```", hit["error"], "```", ""]
    acc = results.get("access", {})
    if "table" in acc:
        s = acc["settings"]
        parts += ["## Access modes on hits", "",
                  f"Same wrk settings (-t{s['threads']} -c{s['connections']} -d{s['duration']}s, {s['rounds']} "
                  "round(s)); valid SigV4 presigned URLs from the test origin's presigner, one URL repeated: "
                  "`verify` and `revalidate` serve it on its grant (Caddy alone, one check per S3CACHE_GRANT_TTL "
                  "window); the `-checked` rows (S3CACHE_GRANT_TTL=0) check every hit. `revalidate-checked` asks the "
                  "origin on every hit; the origin here is the moto-based test origin (Python), far slower than "
                  "S3, so its figures are bounded by that origin, not by s3cache (and S3 would add a network round "
                  "trip of its own).", "",
                  markdown_table(["size", "mode", "req/s", "MB/s", "p50 ms", "p99 ms", "vs open", "errors",
                                  "req/s per round", "CPU ms/request: caddy / sidecar / origin / wrk"],
                                 [[r["size"], r["mode"], _num(r["req_per_s"]), _num(r["mb_per_s"]),
                                   f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", _x(r["vs_open"]), r["errors"],
                                   ", ".join(_num(v) for v in r["runs"]),
                                   _cpu(r, ("caddy", "sidecar", "origin", "wrk"))] for r in acc["table"]]),
                  "", CPU_NOTE, ""]
    elif "error" in acc:
        parts += ["## Access modes on hits", "", "```", acc["error"], "```", ""]
    miss = results.get("miss", {})
    if "redirects" in miss:
        red = miss["redirects"]
        parts += ["## Miss path", "", f"### Redirects under {red['connections']} concurrent clients", "",
                  f"wrk -t2 -c{red['connections']} -d{red['duration']}s; every request a distinct key (Lua), so "
                  "every GET is a miss answered by the sidecar (and queues a fill, which the nginx origin answers "
                  "404 at once; beyond S3CACHE_FILL_WORKERS running and 1024 queued, fills are dropped). "
                  "\"no fill\": the same misses with `Range: bytes=0-0` on a stack with S3CACHE_FILL_ON_RANGE=off "
                  "(redirect only). Baseline: DELETE of the same kind of path, which Caddy redirects itself.", "",
                  markdown_table(["kind", "req/s", "p50 ms", "p99 ms", "requests", "errors",
                                  "CPU ms/request: caddy / sidecar / wrk"],
                                 [[r["kind"], _num(r["req_per_s"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                                   _num(r["requests"]), r["errors"], _cpu(r, ("caddy", "sidecar", "wrk"))]
                                  for r in red["table"]]), "", CPU_NOTE, ""]
    if "fill" in miss:
        fill = miss["fill"]
        parts += [f"### Background fill of a {human_bytes(fill['bytes'])} object", "",
                  "Local nginx origin (a file of random bytes, served from the page cache; plain URL). Fill time = miss request to the object on disk "
                  "(polled every 10 ms); the sidecar's own log time beside it. A fill streams to a temp file, "
                  "fsyncs, renames; with an MD5 ETag (as S3 sends for single-part uploads) it also hashes the body.",
                  "", markdown_table(["kind", "seconds (median)", "MB/s", "sidecar log s", "runs"],
                                     [[r["kind"], f"{r['seconds']:.2f}", _num(r["mb_per_s"]),
                                       "" if r["log_seconds"] is None else f"{r['log_seconds']:.2f}",
                                       ", ".join(f"{v:.2f}" for v in r["runs"])] for r in fill["table"]]), ""]
    if "error" in miss:
        parts += ["## Miss path", "", "```", miss["error"], "```", ""]
    st = results.get("stampede", {})
    if "trials" in st:
        parts += ["## Stampede", "", "Clients connect first, then send at once (a barrier); they do not follow "
                  "redirects, so every origin GET for the key is a fill.", "",
                  markdown_table(["mode", "trial", "object", "clients", "origin GETs", "answers", "seconds"],
                                 [[t["mode"], t["trial"], human_bytes(t["bytes"]), t["clients"], t["origin_gets"],
                                   ", ".join(f"{k}: {v}" for k, v in sorted(t["statuses"].items())),
                                   f"{t['seconds']:.2f}"] for t in st["trials"]]), ""]
    elif "error" in st:
        parts += ["## Stampede", "", "```", st["error"], "```", ""]
    eg = results.get("egress", {})
    if "real" in eg:
        parts += ["## Egress", "",
                  f"Zipf α={eg['alpha']} over {eg['objects']:,} objects (lognormal sizes, mean "
                  f"{human_bytes(eg['mean_object_bytes'])}), {eg['requests_executed']:,} requests replayed in order "
                  f"by one client (misses followed to the origin); working set {human_bytes(eg['working_set_bytes'])} "
                  f"in {eg['distinct_objects']:,} objects; cache cap (S3CACHE_MAX_BYTES) "
                  f"{human_bytes(eg['capacity_bytes'])} = 10%, evictor every {eg['evict_interval']} s "
                  f"(90%/80% watermarks). Misses are paced so one interval's fills stay within "
                  f"{eg['overshoot_pacing']:.0%} of the cap (the cap is enforced by passes, not per fill). "
                  f"Dollars at ${eg['price_per_gb']}/GB, 1 TB = 1000 GB.", "",
                  markdown_table(["", "requests", "hit ratio", "byte hit ratio", "origin ÷ client bytes",
                                  "$ saved / TB served", "cache at passes (mean / peak of cap)"],
                                 [[f"s3cache, S3CACHE_MISS={r['mode']}", _num(r["requests"]), f"{r['hit_ratio']:.3f}",
                                   f"{r['byte_hit_ratio']:.3f}", f"{r['origin_per_client']:.3f}",
                                   f"{r['dollars_saved_per_tb']:.2f}",
                                   f"{r['mean_cache_bytes_seen'] / eg['capacity_bytes']:.0%} / "
                                   f"{r['peak_cache_bytes_seen'] / eg['capacity_bytes']:.0%}"] for r in eg["real"]]
                                 + [[f"simulated {s['policy']}", _num(eg["requests_executed"]), f"{s['hit_ratio']:.3f}",
                                     f"{s['byte_hit_ratio']:.3f}", f"{s['origin_per_client']:.3f}",
                                     f"{s['dollars_saved_per_tb']:.2f}", ""] for s in eg["sim"]]), "",
                  "Origin bytes for s3cache split into the clients' own downloads after a redirect and the "
                  "sidecar's fills: " + "; ".join(
                      f"{r['mode']}: {human_bytes(r['origin_client_bytes'])} by clients ({r['origin_client_gets']} GETs) "
                      f"+ {human_bytes(r['origin_fill_bytes'])} by fills ({r['origin_fill_gets']} GETs)"
                      for r in eg["real"]) + ".", ""]
    elif "error" in eg:
        parts += ["## Egress", "", "```", eg["error"], "```", ""]
    parts += _policies_markdown(results.get("policies", {}), plots)
    ws = results.get("wsgi", {})
    if "kinds" in ws:
        parts += wsgi_servers.markdown(ws)
    elif "error" in ws:
        parts += ["## WSGI server for the sidecar", "", "```", ws["error"], "```", ""]
    parts += _hitprof_markdown(results.get("hitprof", {}))
    ev = results.get("evictor_scale", {})
    if ev.get("phases") or ev.get("skipped") or ev.get("error"):
        parts += ["## Eviction scale", ""]
        if ev.get("phases"):
            parts += [f"`bench/evictor_scale.py --files {ev['files']}` (its own figures):", "", "```",
                      ev["output"].strip(), "```", ""]
        else:
            parts += [ev.get("skipped") or ev.get("error"), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def make_plots(results: dict, out: Path) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    hit = results.get("hit", {})
    if "table" in hit:
        sizes = list(dict.fromkeys(r["size"] for r in hit["table"]))
        servers = list(dict.fromkeys(r["server"] for r in hit["table"]))
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        width = 0.8 / len(servers)
        for i, server in enumerate(servers):
            rows = [_hit_row(results, s, server) for s in sizes]
            xs = [j + i * width for j in range(len(sizes))]
            color = COLORS.get(server)
            axes[0].bar(xs, [r["req_per_s"] for r in rows], width, label=server, color=color)
            axes[1].bar(xs, [r["mb_per_s"] for r in rows], width, label=server, color=color)
            axes[2].bar(xs, [r["p99_ms"] for r in rows], width, label=server, color=color)
        for ax, title in zip(axes, ("hits: requests/s (log)", "hits: MB/s of payload", "hits: p99 latency, ms (log)")):
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], sizes)
            ax.set_title(title)
        axes[0].set_yscale("log")
        axes[2].set_yscale("log")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "hit_path.png", dpi=110)
        plt.close(fig)
        made.append("hit_path.png")

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for server in servers:
            if server == "caddy":
                continue
            ax.plot(sizes, [_hit_row(results, s, server)["vs_caddy"] for s in sizes], marker="o", label=server,
                    color=COLORS.get(server))
        ax.axhline(1.0, color="grey", lw=0.8)
        targets = list(hit["targets"].items())
        ax.scatter([s for s, _ in targets], [t for _, t in targets], marker="_", s=600, color="red", zorder=5,
                   label="s3cache target")
        ax.set_title("hits ÷ bare caddy file-server (req/s, log scale)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "hit_ratios.png", dpi=110)
        plt.close(fig)
        made.append("hit_ratios.png")
    acc = results.get("access", {})
    if "table" in acc:
        sizes = list(dict.fromkeys(r["size"] for r in acc["table"]))
        modes = list(dict.fromkeys(r["mode"] for r in acc["table"]))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        width = 0.8 / len(modes)
        for i, mode in enumerate(modes):
            rows = [next(r for r in acc["table"] if r["size"] == s and r["mode"] == mode) for s in sizes]
            xs = [j + i * width for j in range(len(sizes))]
            bars = axes[0].bar(xs, [r["req_per_s"] for r in rows], width, label=mode, color=COLORS.get(mode))
            for bar, r in zip(bars, rows):
                axes[0].annotate(f"{r['vs_open']:.2f}×", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                 ha="center", va="bottom", fontsize=8)
            axes[1].bar(xs, [r["p99_ms"] for r in rows], width, label=mode, color=COLORS.get(mode))
        for ax, title in zip(axes, ("hits by access mode: req/s (÷ open)", "p99 latency, ms")):
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], sizes)
            ax.set_title(title)
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "access_modes.png", dpi=110)
        plt.close(fig)
        made.append("access_modes.png")
    miss = results.get("miss", {})
    if "fill" in miss and "redirects" in miss:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        red = miss["redirects"]["table"]
        xs = range(len(red))
        axes[0].bar([x - 0.2 for x in xs], [r["p50_ms"] for r in red], 0.4, label="p50")
        axes[0].bar([x + 0.2 for x in xs], [r["p99_ms"] for r in red], 0.4, label="p99")
        axes[0].set_xticks(list(xs), [r["kind"].replace(" (", "\n(") for r in red], fontsize=7)
        axes[0].set_yscale("log")
        axes[0].set_title(f"redirect latency, ms, {miss['redirects']['connections']} clients")
        axes[0].legend()
        fill = miss["fill"]["table"]
        axes[1].barh([r["kind"] for r in fill], [r["mb_per_s"] for r in fill])
        axes[1].set_title(f"{human_bytes(miss['fill']['bytes'])} transfer, MB/s")
        fig.tight_layout()
        fig.savefig(out / "miss_path.png", dpi=110)
        plt.close(fig)
        made.append("miss_path.png")
    eg = results.get("egress", {})
    if "real" in eg:
        labels = [f"s3cache ({r['mode']})" for r in eg["real"]] + [s["policy"] for s in eg["sim"]]
        bhr = [r["byte_hit_ratio"] for r in eg["real"]] + [s["byte_hit_ratio"] for s in eg["sim"]]
        opc = [r["origin_per_client"] for r in eg["real"]] + [s["origin_per_client"] for s in eg["sim"]]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], bhr, 0.4, label="byte hit ratio")
        ax.bar([x + 0.2 for x in xs], opc, 0.4, label="origin ÷ client bytes")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_title("egress: Zipf 0.9, lognormal sizes, cache = 10% of working set")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "egress.png", dpi=110)
        plt.close(fig)
        made.append("egress.png")
    made += _policies_plot(results.get("policies", {}), out, plt)
    return made


def _hitprof_markdown(hp: dict) -> list[str]:
    """bench/hit_profile.py: Caddy's CPU by part of the hit path, and the ablation table."""
    if "error" in hp:
        return ["## Hit path: where the time goes", "", "```", hp["error"], "```", ""]
    if "table" not in hp:
        return []
    s = hp["settings"]
    parts = ["## Hit path: where the time goes", "",
             "`bench/hit_profile.py` (`bench/run --only hitprof`). A CPU profile of the stack's Caddy "
             "(S3CACHE_ACCESS=open, access log on; pprof from its admin socket) while wrk hits one object; each "
             "sample is charged to the nearest named frame to its leaf (bench/pprof.py: a regexp run by a `map` is "
             "the map's, a write made by the log is the log's). Shares of Caddy's CPU samples:", ""]
    labels = list(hp["profiles"])
    names = [b["bucket"] for b in hp["profiles"][labels[0]]["buckets"]] if labels else []
    rows = []
    for name in names:
        row = [name]
        for label in labels:
            b = next(b for b in hp["profiles"][label]["buckets"] if b["bucket"] == name)
            row.append(f"{b['share']:.0%}")
        rows.append(row)
    parts += [markdown_table(["part of the hit path"] + [f"{lb} ({hp['profiles'][lb]['cpu_seconds']:.1f} CPU s)"
                                                          for lb in labels], rows), ""]
    parts += [f"Ablation: the shipped Caddyfile and diagnostic copies with one part taken out (never shipped), "
              f"and bare `caddy file-server`; wrk -t{s['threads']} -c{s['connections']} -d{s['duration']}s, "
              f"{s['rounds']} interleaved round(s), ratios are medians of per-round pairs. Caddy CPU µs/req: the CPU "
              f"time its process spent per request served (/proc), which other work on the machine moves far less "
              f"than req/s.", "",
              markdown_table(["size", "Caddyfile", "req/s", "vs caddy", "vs shipped", "Caddy CPU µs/req",
                              "CPU/req vs caddy", "errors", "req/s per round"],
                             [[r["size"], r["server"], _num(r["req_per_s"]), _x(r["vs_caddy"]), _x(r["vs_shipped"]),
                               f"{r['cpu_us_per_req']:.0f}", _x(r["cpu_vs_caddy"]), r["errors"],
                               ", ".join(_num(v) for v in r["runs"])] for r in hp["table"]]), ""]
    return parts


def _policies_markdown(po: dict, plots: list[str]) -> list[str]:
    if "error" in po:
        return ["## Admission and eviction", "", "```", po["error"], "```", ""]
    if "sim" not in po:
        return []

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    def d(v):
        return "n/a" if v is None else f"{v:.2f}"

    parts = ["## Admission and eviction", "",
             f"Traces of `bench/traces.py` ({po['objects']:,} objects, {po['requests']:,} requests, fixed seeds); "
             "capacity as a share of the working set's bytes. `lru+first` is s3cache before issue 16, `lfu+tinylfu` "
             "the defaults before the adaptive policy, `adaptive+tinylfu` the defaults (`bench/policysim.py`); `libcachesim …` rows are libCacheSim's own policies"
             + ("" if po.get("libcachesim") else " (not installed in this run)") + ". "
             "$ saved per TB served at $0.09/GB.", "",
             "### Targets (simulated)", "",
             markdown_table(["target", "value", ""], [[t["target"], t["value"], _status(t["met"])] for t in po["targets"]]),
             "", "### Simulated", "",
             markdown_table(["trace", "capacity", "policy", "hit ratio", "byte hit ratio", "origin ÷ client, redirect",
                             "origin ÷ client, stream", "$ saved/TB, redirect", "$ saved/TB, stream"],
                            [[r["trace"], f"{r['capacity']:.0%}", r["policy"], f(r["hit_ratio"]), f(r["byte_hit_ratio"]),
                              f(r["redirect_origin_per_client"]), f(r["stream_origin_per_client"]),
                              d(r["dollars_saved_per_tb_redirect"]), d(r["dollars_saved_per_tb_stream"])]
                             for r in po["sim"]]), ""]
    if po.get("real_targets"):
        parts += ["### Targets (real stack)", "",
                  "The same targets on the real stack's runs below; stream mode against the best simulated policy "
                  "on the requests the run got through.", "",
                  markdown_table(["target", "value", ""],
                                 [[t["target"], t["value"], _status(t["met"])] for t in po["real_targets"]]), ""]
    if po.get("real"):
        parts += ["### Real stack", "",
                  markdown_table(["trace", "capacity", "policy", "mode", "requests", "hit ratio", "byte hit ratio",
                                  "origin ÷ client", "$ saved/TB", "peak cache at passes (of cap)"],
                                 [[r.get("trace", "zipf-0.9"), f"{r['capacity']:.0%}", r["policy"], r["mode"], _num(r["requests"]),
                                   f(r["hit_ratio"]), f(r["byte_hit_ratio"]), f(r["origin_per_client"]),
                                   d(r["dollars_saved_per_tb"]),
                                   f"{r['peak_cache_bytes_seen'] / max(1, r['capacity_bytes']):.0%}"
                                   if r.get("capacity_bytes") else ""] for r in po["real"]]), ""]
    if "policies.png" in plots:
        parts += ["![admission and eviction](policies.png)", ""]
    return parts


def _policies_plot(po: dict, out: Path, plt) -> list[str]:
    if "sim" not in po:
        return []
    names = sorted({r["trace"] for r in po["sim"]}, key=[r["trace"] for r in po["sim"]].index)
    caps = sorted({r["capacity"] for r in po["sim"]})
    pols = list(dict.fromkeys(r["policy"] for r in po["sim"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4.5), sharey=True)
    for ax, name in zip(axes, names):
        for pol in pols:
            ys = [next((r["byte_hit_ratio"] for r in po["sim"] if (r["trace"], r["capacity"], r["policy"]) ==
                        (name, c, pol)), None) for c in caps]
            ax.plot([f"{c:.0%}" for c in caps], ys, marker="o", label=pol,
                    lw=2.5 if pol == "adaptive+tinylfu" else 1)
        ax.set_title(f"{name}: byte hit ratio")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "policies.png", dpi=110)
    plt.close(fig)
    return ["policies.png"]


def write(results: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(results, out)
    (out / "latest.json").write_text(json.dumps(results, indent=1, default=str))
    md = out / "latest.md"
    md.write_text(full_markdown(results, plots))
    return md
