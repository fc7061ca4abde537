"""Where a hit's time goes in Caddy (issue 15 item 3): a CPU profile under wrk, and an ablation table.

**Profile.**  The real stack (``s3cache up``, S3CACHE_ACCESS=open, access log on) runs its Caddy with
the admin endpoint on a unix socket in the cache's run directory (``s3cache up`` always does, for
``s3cache reload``); Go's pprof handlers live there (/debug/pprof/profile).  While wrk hits one object,
a CPU profile is taken and its samples are sorted into buckets by the functions on their stacks
(bench/pprof.py): access log encoding and writing, regexp, the ``map``, CEL, the file matcher's stat,
file_server and sendfile, HTTP/net, GC/runtime.  The percentages are of Caddy's CPU samples.

**Ablation.**  The shipped Caddyfile and diagnostic copies of it with one part removed or replaced (the
access log; its filter encoder, by plain JSON, which would log signatures; the regexp matchers every
hit meets; the expiry check; the marks check), plus bare ``caddy file-server``, measured interleaved:
the ratio lost to each part, in the same run.  On a shared 2-core machine these ratios move by more
than most single parts cost; the profile's shares are the steadier attribution.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import time
from pathlib import Path

from bench import cpu
from bench.common import KiB, MiB, Context, median, ratio, rotated
from bench.hit_path import BUCKET, _check_served, _warm_stack, key_for, presigned_looking_query
from bench.pprof import attribute, parse, top_functions
from bench.servers import ROOT, BenchStack, CaddyFileServer, caddyfile_without_access_log, origin_nginx
from bench.wrk import run_wrk

SIZES = [("4 KiB", 4 * KiB), ("1 MiB", MiB)]

# pprof.attribute: the named frame nearest a sample's leaf decides, patterns tried in this order on it.
# Placeholders (caddy.Replacer) are not named: their cost is the matcher's or handler's that asked.
BUCKETS = [
    ("access log: encode + write", r"caddyhttp\.\(\*Server\)\.logRequest|caddyhttp\.\(\*Server\)\.logTrace|go\.uber\.org/zap|caddy/v2/modules/logging|timberjack|caddy/v2\.\(\*Logging\)|caddyhttp\.LoggableHTTP|caddyhttp\.\(\*LoggableHTTP|caddyhttp\.LoggableTLS"),
    ("map (its regexps included)", r"caddyhttp/map\."),
    ("regexp matchers (vars_regexp ...)", r"caddyhttp\.MatchVarsRE|caddyhttp\.MatchPathRE|caddyhttp\.MatchHeaderRE|caddyhttp\.\(\*?MatchRegexp\)|caddyhttp\.MatchRegexp"),
    ("CEL expression", r"google/cel-go|caddyhttp\.\(\*?MatchExpression\)|caddyhttp\.MatchExpression"),
    ("file matcher (stat)", r"fileserver\.\(\*?MatchFile\)|fileserver\.MatchFile"),
    ("file_server (stat, open, send)", r"fileserver\.\(\*FileServer\)|net/http\.serveContent|net/http\.ServeContent|net\.sendFile|poll\.SendFile|net/http\.\(\*response\)\.ReadFrom|net\.\(\*TCPConn\)\.ReadFrom|io\.copyBuffer"),
    ("other matchers, headers, routing", r"caddyhttp\.Match|caddyhttp\.\(\*?Match|caddyhttp\.\(\*Subroute\)|caddyhttp\.RouteList|caddyhttp\.wrapRoute|caddyhttp\.wrapMiddleware|caddyhttp/headers\.|caddyhttp\.(\*?)\(?(MatcherSet|MatcherSets)|caddyhttp\.(newVars|\(\*Server\)\.primaryHandlerChain)|caddyhttp\.PrepareRequest|caddyhttp\.\(\*Server\)\.ServeHTTP"),
    ("HTTP/1 + net (read, parse, write)", r"^net/http\.|^net\.|^bufio\.|^net/textproto"),
    ("GC (background)", r"runtime\.gcBgMarkWorker|runtime\.bgsweep|runtime\.bgscavenge|runtime\.gcStart"),
    ("scheduler + netpoll", r"runtime\.schedule|runtime\.findRunnable|runtime\.mcall|runtime\.park_m|runtime\.sysmon|runtime\.mstart|runtime\.goexit0"),
]



def caddy_pid(server) -> int:
    """The pid of the Caddy serving ``server`` (a BenchStack's child of ``s3cache up``, or the bare one)."""
    if isinstance(server, CaddyFileServer):
        return server.proc.pid
    return cpu.stack_pids(server)["caddy"][0]  # what s3cache up recorded in run/parts.json


def run_wrk_cpu(server, url: str, settings, size: int) -> dict:
    """run_wrk plus the CPU its Caddy spent per request: a figure other work on the machine moves far less."""
    pid = caddy_pid(server)
    before = cpu.process_cpu(pid)
    r = run_wrk(url, settings, payload_bytes=size)
    r["caddy_cpu_us_per_req"] = (cpu.process_cpu(pid) - before) / max(r["requests"], 1) * 1e6
    return r


def admin_socket(stack: BenchStack) -> Path:
    for base in (stack.cache_dir, stack.workdir):
        found = sorted(base.rglob("admin.sock"))
        if found:
            return found[0]
    raise RuntimeError("Caddy's admin socket was not found (s3cache up puts it under run/)")


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def fetch_profile(sock: Path, seconds: int) -> bytes:
    conn = _UnixHTTP(sock, timeout=seconds + 60)
    try:
        conn.request("GET", f"/debug/pprof/profile?seconds={seconds}", headers={"Host": "localhost"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"pprof: {resp.status} {body[:200]!r}")
        return body
    finally:
        conn.close()


def profile_under_load(stack: BenchStack, url: str, size: int, ctx: Context, save: Path | None = None) -> dict:
    """A CPU profile of the stack's Caddy taken while wrk hits ``url``; samples sorted into BUCKETS."""
    seconds = max(2, ctx.wrk.duration - 2)
    sock = admin_socket(stack)
    box: dict = {}

    def grab() -> None:
        time.sleep(1)  # wrk's connections are up
        try:
            box["data"] = fetch_profile(sock, seconds)
        except Exception as exc:  # reported below
            box["error"] = exc

    t = threading.Thread(target=grab)
    t.start()
    r = run_wrk(url, type(ctx.wrk)(ctx.wrk.threads, ctx.wrk.connections, seconds + 2), payload_bytes=size)
    t.join()
    if "error" in box:
        raise box["error"]
    if save is not None:
        save.write_bytes(box["data"])  # for `go tool pprof`, or bench/pprof.py again
    prof = parse(box["data"])
    totals = attribute(prof, BUCKETS)
    total = sum(totals.values()) or 1
    return {
        "req_per_s": r["req_per_s"], "profile_seconds": seconds, "sample_types": prof.sample_types,
        "cpu_seconds": total / 1e9,
        "buckets": [{"bucket": k, "cpu_s": v / 1e9, "share": v / total} for k, v in totals.items()],
        "top": [{"function": f, "flat": fl / total, "cum": c / total} for f, fl, c in top_functions(prof, 30)],
    }


def _variant(text: str, name: str) -> str:
    """The shipped Caddyfile with one part taken out (diagnostic copies, never shipped)."""
    if name == "no-hit-regexps":
        # The regexp matchers every hit meets before its handle: vars_regexp always false for a plain hit.
        for matcher in ("@raw_query_bytes", "@internal_raw", "@unsafe_path", "@raw_plus", "@subresource"):
            text = re.sub(rf"\n\t{matcher} vars_regexp [^\n]*", f"\n\t{matcher} path /s3cache-ablation-never", text)
        return text
    if name == "log-json":
        # Diagnostic only (it would log signatures): what the filter encoder costs over plain JSON.
        site = text.index("\n\tlog {\n", text.index("{$S3CACHE_CADDY_SITE:"))
        return text[:site] + re.sub(r"\n\t\tformat filter \{\n.*?\n\t\t\}\n", "\n\t\tformat json\n", text[site:],
                                    count=1, flags=re.S)
    if name == "no-expiry":
        return text.replace("import unexpired serve_open", "import serve_open")
    if name == "no-marks":
        return re.sub(r"\(serve_open\) \{.*?\n\}\n", "(serve_open) {\n\timport serve_cached\n}\n", text, flags=re.S)
    raise ValueError(name)


def run(ctx: Context) -> dict:
    work = ctx.dir("hitprof")
    docroot = ctx.dir("hitprof/origin-docroot")
    (docroot / BUCKET).mkdir(exist_ok=True)
    for label, size in SIZES:
        (docroot / BUCKET / key_for(label)).write_bytes(os.urandom(size))
    query = presigned_looking_query()
    shipped = (ROOT / "Caddyfile").read_text()
    variants: dict[str, Path | None] = {"s3cache": None}
    nolog = caddyfile_without_access_log(work / "Caddyfile.nolog")
    if nolog:
        variants["no-log"] = nolog
    for name in ("log-json", "no-hit-regexps", "no-expiry", "no-marks"):
        path = work / f"Caddyfile.{name}"
        path.write_text(_variant(shipped, name))
        variants[name] = path
    servers: dict[str, object] = {}
    stoppers = []
    profiles: dict[str, dict] = {}
    try:
        origin = origin_nginx(ctx.dir("hitprof/origin"), docroot).start()
        stoppers.append(origin.stop)
        for name, caddyfile in variants.items():
            st = BenchStack(ctx.dir(f"hitprof/{name}"), origin.url, caddyfile=caddyfile, S3CACHE_ACCESS="open",
                            S3CACHE_EVICT_INTERVAL="3600").start()
            stoppers.append(st.stop)
            servers[name] = st
            for label, size in SIZES:
                _warm_stack(st, f"/{BUCKET}/{key_for(label)}?{query}", key_for(label), size)
        caddy = CaddyFileServer(ctx.dir("hitprof/caddy"), servers["s3cache"].cache_dir / "objects").start()
        stoppers.append(caddy.stop)
        servers["caddy"] = caddy
        for label, size in SIZES:
            _check_served(caddy.url + f"/{BUCKET}/{key_for(label)}?{query}", size)

        for label, size in SIZES:
            url = servers["s3cache"].url + f"/{BUCKET}/{key_for(label)}?{query}"
            profiles[label] = profile_under_load(servers["s3cache"], url, size, ctx,
                                                 save=work / f"cpu-{key_for(label)}.pprof.gz")
            ctx.log(f"profile {label}: " + ", ".join(f"{b['bucket']} {b['share']:.0%}"
                                                     for b in profiles[label]["buckets"]))

        names = list(servers)
        runs: dict[str, dict[str, list[dict]]] = {label: {n: [] for n in names} for label, _ in SIZES}
        for label, size in SIZES:
            path_q = f"/{BUCKET}/{key_for(label)}?{query}"
            if not ctx.quick:
                for name in names:
                    run_wrk(servers[name].url + path_q, type(ctx.wrk)(2, 32, 1), payload_bytes=size)
            for round_no in range(ctx.rounds):
                for name in rotated(names, round_no):
                    r = run_wrk_cpu(servers[name], servers[name].url + path_q, ctx.wrk, size)
                    runs[label][name].append(r)
                    ctx.log(f"hitprof {label:>6} {name:<16} {r['req_per_s']:9.0f} req/s p99 {r['p99_ms']:7.2f} ms "
                            f"Caddy {r['caddy_cpu_us_per_req']:6.1f} CPU µs/req")
    finally:
        for stop in reversed(stoppers):
            stop()

    table = []
    for label, size in SIZES:
        by = runs[label]
        for name in names:
            rs = by[name]
            table.append({
                "size": label, "server": name, "req_per_s": median(r["req_per_s"] for r in rs),
                "vs_caddy": median(ratio(a["req_per_s"], b["req_per_s"]) for a, b in zip(rs, by["caddy"])),
                "vs_shipped": median(ratio(a["req_per_s"], b["req_per_s"]) for a, b in zip(rs, by["s3cache"])),
                "runs": [round(r["req_per_s"], 1) for r in rs],
                "errors": sum(r["errors"] for r in rs),
                "cpu_us_per_req": median(r["caddy_cpu_us_per_req"] for r in rs),
                "cpu_vs_caddy": median(ratio(a["caddy_cpu_us_per_req"], b["caddy_cpu_us_per_req"])
                                       for a, b in zip(rs, by["caddy"])),
            })
    return {"settings": vars(ctx.wrk) | {"rounds": ctx.rounds}, "profiles": profiles, "table": table,
            "variants": list(variants)}


if __name__ == "__main__":
    import json
    import sys
    import tempfile
    ctx = Context(Path(tempfile.mkdtemp(prefix="s3cache-hitprof-")), quick="--quick" in sys.argv)
    print(json.dumps(run(ctx), indent=1))
