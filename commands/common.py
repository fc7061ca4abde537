"""What every subcommand shares: how it reads its configuration, and the failure that is one line, exit 1.

Every subcommand reads its configuration the same way: the environment, with the env file filling in
what the environment does not set (as docker compose does); the env file is ``--env-file F``, else
``./.env`` when it exists.
"""

from __future__ import annotations

import argparse
import os
import sys

from s3cache.config import Config, read_env_file
from s3cache.layout import Layout

DEFAULT_ENV_FILE = ".env"
ENV_FILE_HELP = "KEY=VALUE file (default: ./.env if it exists; '' for none); the environment wins over it"


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


def existing_cache(args: argparse.Namespace, command: str) -> Layout | None:
    """The configured cache directory's layout; None (after one line on stderr) when there is no cache there."""
    layout = Layout(load_config(args).dir)
    if not layout.objects_dir.is_dir():
        print(f"s3cache {command}: no cache at {layout.root}", file=sys.stderr)
        return None
    return layout
