"""The ``s3cache`` command: the parser, and one module per subcommand (the console script's entry point).

Each module in ``SUBCOMMANDS`` has ``add_parser(sub)`` (registers its subcommand and arguments on the
argparse subparsers, returns its parser) and ``run(args) -> int`` (the exit status); adding a subcommand
is one module and one line here.  Failures a user can act on are one line on stderr: a configuration
error exits 2, a ``StartError`` or an OS error exits 1.
"""

from __future__ import annotations

import argparse
import sys

from commands import caddy_env, evict, ls, purge, reload, stats, up, warm
from commands.common import StartError
from s3cache.config import ConfigError

# In the order `s3cache --help` lists them.
SUBCOMMANDS = (up, evict, warm, stats, reload, caddy_env, purge, ls)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3cache", description="A drop-in caching proxy for Amazon S3.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
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
