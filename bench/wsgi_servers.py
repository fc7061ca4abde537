"""Which WSGI server the sidecar runs under (issue 15 item 2): waitress as shipped against gunicorn and granian.

Every server serves the same app, ``sidecar.app.create_app`` with a Config
from the environment, in the same shape: one listening socket, as many request
worker processes as S3CACHE_SIDECAR_WORKERS (default: the cores), each with
the threads ``sidecar.__main__`` gives waitress, and one fill process on the
back channel.

- ``waitress``: ``python -m sidecar`` itself, as shipped (its master, workers and fill process).
- ``gunicorn``: ``gunicorn -k gthread`` with the same worker and thread counts.
- ``granian``: granian's WSGI interface (Rust HTTP, Python threads for the app), same counts.
(Run on 2026-12-02, this benchmark found waitress closing the connection after the check's 204: the check
now answers an empty 200, ``sidecar.hit_headers.SERVE``.)

The latter two run ``bench/wsgi_app.py``: its fill process, and its app factory in each worker.

wrk talks to each server directly (no Caddy), 64 connections, rounds
interleaved (each server once per round, order rotated), with the requests
Caddy sends the sidecar most, headers and all:

- ``miss``: a redirect for a key never seen (a distinct path per request,
  S3CACHE_ACCESS=open).  ``Range: bytes=0-0`` with S3CACHE_FILL_ON_RANGE=off,
  so no fill is queued: the fill process is the same whatever the server,
  and fills would only add noise to what is compared here.
- ``check``: Caddy's access check before it serves a hit (the Caddyfile's
  ``hit_checked``: GET /_s3cache/auth with the client's URI, Host and the file
  Caddy matched), S3CACHE_ACCESS=verify with a valid SigV4 presigned URL for a
  4 KiB object in the cache, S3CACHE_GRANT_TTL=0 so every check is a full one
  (a URL seen for the first time).

The upstream is a loopback port nobody listens on: neither kind asks S3.
Figures: req/s, p50/p99, and CPU milliseconds per request of all the server's
processes (master, workers, fill process: bench/cpu.py), each against
waitress in the same round.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench import cpu
from bench.common import KiB, ROOT, Context, median, ratio, rotated
from bench.servers import stop_process
from bench.wrk import WrkSettings, run_wrk
from s3cache import metadata, wire
from s3cache.config import Config
from s3cache.layout import Layout, ObjectRef
from tests.origin.credentials import ACCESS_KEY_1, REGION, SECRET_KEY_1
from tests.stack import free_port, raw_request, wait_until

SERVERS = ["waitress", "gunicorn", "granian"]
BASELINE = "waitress"
BUCKET = "bench-wsgi"
OBJECT_KEY = "obj-4k.bin"
OBJECT_BYTES = 4 * KiB
# What issue 15 asks of another server before it is worth a dependency (the lead decides; we only report).
WORTH_SWITCHING = 1.5
# What Caddy's reverse_proxy adds to every request it hands the sidecar (Caddyfile: to_sidecar, hit_checked).
CADDY_HOST = "127.0.0.1:8080"
CADDY_HEADERS = {wire.HOST_HEADER: CADDY_HOST, wire.CLIENT_IP_HEADER: "127.0.0.1",
                 "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": CADDY_HOST}


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                ppid = int(fh.read().rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(roots: list[int]) -> list[int]:
    """``roots`` and every process below them (a server's master, workers, and their helpers)."""
    kids, seen, todo = _children(), [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo += kids.get(pid, [])
    return seen


@dataclass
class Server:
    """One WSGI server serving the sidecar app on 127.0.0.1 (plus the fill process it needs)."""

    name: str
    workdir: Path
    env: dict[str, str]
    workers: int
    threads: int
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, cmd: list[str], log: str) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=open(self.workdir / log, "ab"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 60.0) -> "Server":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**self.env, "S3CACHE_SIDECAR_LISTEN": f"127.0.0.1:{self.port}",
                    "S3CACHE_SIDECAR_WORKERS": str(self.workers)}
        py = sys.executable
        if self.name == "waitress":
            self._spawn([py, "-m", "sidecar"], "sidecar.log")
        else:
            from bench import wsgi_app
            channel = self.env[wsgi_app.BACKCHANNEL_ENV] = f"s3cache-bench-{uuid.uuid4().hex}"
            fill = self._spawn([py, "-m", "bench.wsgi_app", "fill"], "fill.log")

            def fill_ready() -> bool:
                if fill.poll() is not None:
                    raise RuntimeError(f"{self.name}: the fill process exited ({self.workdir / 'fill.log'})")
                return wsgi_app.ready(channel)
            wait_until(fill_ready, timeout, what=f"{self.name}'s fill process")
            if self.name == "gunicorn":
                self._spawn([py, "-m", "gunicorn", "--worker-class", "gthread", "--workers", str(self.workers),
                             "--threads", str(self.threads), "--bind", f"127.0.0.1:{self.port}",
                             "--backlog", "1024", "--keep-alive", "30", "--graceful-timeout", "5",
                             "bench.wsgi_app:make()"], "gunicorn.log")
            elif self.name == "granian":
                self._spawn([py, "-m", "granian", "--interface", "wsgi", "--factory", "--workers", str(self.workers),
                             "--blocking-threads", str(self.threads), "--host", "127.0.0.1", "--port", str(self.port),
                             "--backlog", "1024", "--http", "1", "--no-ws", "bench.wsgi_app:make"], "granian.log")
            else:
                raise ValueError(self.name)

        def healthy() -> bool:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {proc.returncode}: see {self.workdir}")
            try:
                return raw_request("GET", self.url + wire.HEALTH_PATH, timeout=2).status_code in (200, 503)
            except OSError:
                return False
        wait_until(healthy, timeout, what=f"{self.name} to answer")
        # Every worker forked and serving: a few more answers from whichever worker takes them.
        deadline = time.monotonic() + timeout
        while len(self.pids()) < self.workers + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        return self

    def pids(self) -> list[int]:
        return descendants([p.pid for p in self.procs if p.poll() is None])

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the server first, its fill process last
            stop_process(proc, signal.SIGTERM, timeout=15)


def app_env(workdir: Path, upstream: str, **settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}
    return {**base, "PYTHONPATH": str(ROOT), "S3CACHE_DIR": str(workdir / "cache"), "S3CACHE_UPSTREAM": upstream,
            "S3CACHE_EVICT_INTERVAL": "3600", **settings}


def worker_threads(env: dict[str, str]) -> int:
    """The threads ``python -m sidecar`` gives each waitress worker under this configuration."""
    from sidecar.__main__ import _serve_options
    return _serve_options(Config.from_env(env))["threads"]


def presigned_path(upstream: str) -> str:
    """A valid SigV4 presigned path+query for the bench object, signed for the upstream's host (as botocore does)."""
    import botocore.session
    from botocore.config import Config as BotoConfig
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=upstream, region_name=REGION, aws_access_key_id=ACCESS_KEY_1,
        aws_secret_access_key=SECRET_KEY_1,
        config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}))
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": OBJECT_KEY},
                                        ExpiresIn=6 * 3600)
    return url[len(upstream):]


def cache_object(cache_dir: Path) -> str:
    """The bench object on disk with its record, as a fill leaves it; returns the served header's value."""
    layout = Layout(str(cache_dir))
    layout.ensure()
    ref = ObjectRef(BUCKET, OBJECT_KEY)
    path = layout.object_path(ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(OBJECT_BYTES))
    layout.meta_path(ref).parent.mkdir(parents=True, exist_ok=True)
    metadata.write_fill(layout, ref, {"etag": '"0123456789abcdef0123456789abcdef"',
                                      "content-type": "application/octet-stream"}, OBJECT_BYTES)
    return "/" + layout.relative_path(ref) + "|"


@dataclass
class Kind:
    """One request kind: the configuration it runs under and the wrk arguments that make it."""

    name: str
    settings: dict[str, str]
    expect: int

    def wrk_args(self, server: Server, nonce: str, round_no: int) -> dict:
        raise NotImplementedError


class Miss(Kind):
    def wrk_args(self, server: Server, nonce: str, round_no: int) -> dict:
        return {"url": server.url + "/", "distinct_prefix": f"/{BUCKET}/{nonce}-{server.name}-{round_no}-",
                "distinct_suffix": ".bin", "uri_header": wire.RAW_URI_HEADER,
                "headers": {**CADDY_HEADERS, "Range": "bytes=0-0"}}

    def probe(self, server: Server) -> tuple[str, dict]:
        path = f"/{BUCKET}/probe-{uuid.uuid4().hex[:8]}.bin"
        return path, {**CADDY_HEADERS, "Range": "bytes=0-0", wire.RAW_URI_HEADER: path}


class Check(Kind):
    uri: str = ""
    served: str = ""

    def headers(self) -> dict[str, str]:
        # As hit_checked sends them: forward_auth's method, the client's URI and Host, the matched file, the grant
        # Caddy looked for (none here: S3CACHE_GRANT_TTL=0).
        return {**CADDY_HEADERS, "X-Forwarded-Method": "GET", "X-Forwarded-Uri": self.uri,
                wire.RAW_URI_HEADER: self.uri, wire.SERVED_HEADER: self.served, wire.GRANT_HEADER: "none__|"}

    def wrk_args(self, server: Server, nonce: str, round_no: int) -> dict:
        return {"url": server.url + wire.AUTH_PATH, "headers": self.headers()}

    def probe(self, server: Server) -> tuple[str, dict]:
        return wire.AUTH_PATH, self.headers()


def _probe(kind: Kind, server: Server) -> None:
    path, headers = kind.probe(server)
    r = raw_request("GET", server.url + path, headers=headers, timeout=10)
    if r.status_code != kind.expect:
        raise RuntimeError(f"{kind.name} on {server.name}: expected {kind.expect}, got {r.status_code}: "
                           f"{r.headers} {r.content[:300]!r}")


def _available(name: str) -> bool:
    if name == "waitress":
        return True
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True)
    return proc.returncode == 0


def measure(ctx: Context, kind: Kind, upstream: str, settings: WrkSettings, rounds: int, servers: list[str]) -> dict:
    env = app_env(ctx.dir(f"wsgi/{kind.name}"), upstream, **kind.settings)
    workers = Config.from_env(env).sidecar_workers
    threads = worker_threads(env)
    if isinstance(kind, Check):
        kind.served = cache_object(Path(env["S3CACHE_DIR"]))
        kind.uri = presigned_path(upstream)
    running: dict[str, Server] = {}
    try:
        for name in servers:
            # One cache directory for all: the same object, the same layout; only the server differs.
            running[name] = Server(name, ctx.dir(f"wsgi/{kind.name}/{name}"), env, workers, threads).start()
            _probe(kind, running[name])
        nonce = uuid.uuid4().hex[:8]
        for name in servers:  # warm up: imports, first connections, thread pools grown
            run_wrk(**kind.wrk_args(running[name], nonce + "w", 0), settings=WrkSettings(
                threads=settings.threads, connections=settings.connections, duration=1))
        runs: dict[str, list[dict]] = {name: [] for name in servers}
        for round_no in range(rounds):
            for name in rotated(servers, round_no):
                server = running[name]
                pids = server.pids()
                before = sum(cpu.process_cpu(p) for p in pids)
                r = run_wrk(**kind.wrk_args(server, nonce, round_no), settings=settings)
                used = sum(cpu.process_cpu(p) for p in pids) - before
                r["cpu_ms"] = 1000 * used / max(r["requests"], 1)
                r["processes"] = len(pids)
                runs[name].append(r)
                ctx.log(f"wsgi {kind.name:<5} {name:<8} round {round_no}: {r['req_per_s']:8.0f} req/s "
                        f"p50 {r['p50_ms']:7.2f} ms p99 {r['p99_ms']:7.2f} ms cpu {r['cpu_ms']:.3f} ms/req "
                        f"({len(pids)} processes) errors {r['errors']}")
    finally:
        for server in running.values():
            server.stop()
    base = runs[BASELINE]
    table = []
    for name in servers:
        rs = runs[name]
        table.append({
            "kind": kind.name, "server": name,
            "req_per_s": median(r["req_per_s"] for r in rs), "p50_ms": median(r["p50_ms"] for r in rs),
            "p99_ms": median(r["p99_ms"] for r in rs), "cpu_ms": median(r["cpu_ms"] for r in rs),
            "errors": sum(r["errors"] for r in rs), "requests": sum(r["requests"] for r in rs),
            "processes": rs[0]["processes"],
            "rps_vs_waitress": median(ratio(a["req_per_s"], b["req_per_s"]) for a, b in zip(rs, base)),
            "p50_vs_waitress": median(ratio(a["p50_ms"], b["p50_ms"]) for a, b in zip(rs, base)),
            "p99_vs_waitress": median(ratio(a["p99_ms"], b["p99_ms"]) for a, b in zip(rs, base)),
            "cpu_vs_waitress": median(ratio(a["cpu_ms"], b["cpu_ms"]) for a, b in zip(rs, base)),
            "runs": [round(r["req_per_s"], 1) for r in rs],
        })
    return {"workers": workers, "threads": threads, "table": table}


def versions(servers: list[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in servers:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "?"
    return out


def run(ctx: Context) -> dict:
    servers = [s for s in SERVERS if _available(s)]
    missing = [s for s in SERVERS if s not in servers]
    if missing:
        ctx.log(f"wsgi: not installed (bench/requirements.txt): {', '.join(missing)}")
    settings = WrkSettings(threads=2, connections=64, duration=2 if ctx.quick else 8)
    rounds = 1 if ctx.quick else 5
    upstream = f"http://127.0.0.1:{free_port()}"  # nobody listens: neither kind asks S3
    kinds = [Miss("miss", {"S3CACHE_ACCESS": "open", "S3CACHE_FILL_ON_RANGE": "off"}, 307),
             Check("check", {"S3CACHE_ACCESS": "verify", "S3CACHE_GRANT_TTL": "0",
                             "S3CACHE_SIGNING_KEYS": f"{ACCESS_KEY_1}:{SECRET_KEY_1}"}, 200)]
    out = {"connections": settings.connections, "duration": settings.duration, "rounds": rounds,
           "servers": servers, "missing": missing, "versions": versions(servers), "kinds": {},
           "worth_switching": WORTH_SWITCHING}
    for kind in kinds:
        out["kinds"][kind.name] = measure(ctx, kind, upstream, settings, rounds, servers)
    best = {}
    for name in servers:  # the candidates only
        if name == BASELINE:
            continue
        gains = [next(r["rps_vs_waitress"] for r in k["table"] if r["server"] == name) for k in out["kinds"].values()]
        best[name] = min(gains)
    out["least_gain"] = best  # a server is worth it only if it gains on every kind: its smallest gain
    return out


# -- the report's parts (bench/report.py calls these) ------------------------------------------------


def _x(v: float) -> str:
    return f"{v:.2f}×"


def summary_rows(res: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, gain in res.get("least_gain", {}).items():
        per_kind = "; ".join(f"{k}: {_x(next(r['rps_vs_waitress'] for r in v['table'] if r['server'] == name))} req/s, "
                             f"{_x(next(r['cpu_vs_waitress'] for r in v['table'] if r['server'] == name))} CPU"
                             for k, v in res["kinds"].items())
        rows.append((f"WSGI server: {name} ÷ waitress (sidecar, {res['connections']} clients)", per_kind,
                     f"switch only if ≥ {res['worth_switching']}× on both",
                     "worth it" if gain >= res["worth_switching"] else "keep waitress"))
    return rows


def markdown(res: dict) -> list[str]:
    kinds = res["kinds"]
    any_kind = next(iter(kinds.values()))
    lines = ["## WSGI server for the sidecar", "",
             f"The same sidecar app under each server, wrk straight at it (no Caddy), -t2 -c{res['connections']} "
             f"-d{res['duration']}s, {res['rounds']} interleaved round(s); medians; ratios are medians of per-round "
             f"pairs against waitress. Each server: {any_kind['workers']} worker process(es) on one socket plus the "
             "fill process, the threads `python -m sidecar` gives waitress (" +
             ", ".join(f"{k}: {v['threads']}" for k, v in kinds.items()) + "). "
             "`miss`: a distinct uncached key per request (Range, S3CACHE_FILL_ON_RANGE=off: a 307, no fill); "
             "`check`: Caddy's access check for a hit (GET /_s3cache/auth, S3CACHE_ACCESS=verify, SigV4 presigned, "
             "S3CACHE_GRANT_TTL=0). "
             "CPU ms/request: all the server's processes (master, workers, fill process). "
             "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + "." +
             (f" Not installed: {', '.join(res['missing'])}." if res.get("missing") else ""), "",
             "| kind | server | req/s | p50 ms | p99 ms | CPU ms/req | req/s ÷ waitress | p99 ÷ waitress | "
             "CPU ÷ waitress | errors | req/s per round |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in kinds.values():
        for r in k["table"]:
            lines.append(f"| {r['kind']} | {r['server']} | {r['req_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['cpu_ms']:.3f} | {_x(r['rps_vs_waitress'])} | "
                         f"{_x(r['p99_vs_waitress'])} | {_x(r['cpu_vs_waitress'])} | {r['errors']} | "
                         f"{', '.join(f'{v:,.0f}' for v in r['runs'])} |")
    return lines + [""]
