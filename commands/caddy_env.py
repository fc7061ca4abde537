"""``s3cache caddy-env``: print what the Caddyfile reads, derived from the settings.

The one derivation is ``s3cache.config.caddy_environment`` (each setting declares what Caddy reads of
it); ``s3cache up`` hands the same variables to the Caddy it starts.  Deployments that start Caddy
themselves use this command instead of deriving the values again: docker-compose.yml writes its output
to a file the Caddy container sources (``--output``), the Ansible role writes it (``--json``) to the
environment file of its Caddy unit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from commands.common import ENV_FILE_HELP, load_config
from s3cache import atomic
from s3cache.config import caddy_environment


def shell_lines(env: dict[str, str]) -> str:
    """KEY=value lines a POSIX shell can source (``set -a; . FILE``), values quoted where needed."""
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in env.items())


def run(args: argparse.Namespace) -> int:
    env = caddy_environment(load_config(args))
    text = json.dumps(env, indent=1) + "\n" if args.json else shell_lines(env)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        atomic.write(args.output, text)  # a reader (Caddy's container) never sees half of it
    else:
        sys.stdout.write(text)
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    caddy_env = sub.add_parser("caddy-env", help="print the variables the Caddyfile reads, derived from the settings")
    caddy_env.add_argument("--json", action="store_true", help="one JSON object instead of shell KEY=value lines")
    caddy_env.add_argument("--output", metavar="FILE", help="write FILE (replaced whole) instead of standard output")
    caddy_env.add_argument("--env-file", help=ENV_FILE_HELP)
    return caddy_env
