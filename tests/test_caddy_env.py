"""`s3cache caddy-env`: the one derivation of what Caddy reads, printed for deployments that start Caddy themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hypothesis import given, settings, strategies as st

from commands.caddy_env import shell_lines
from commands.main import SUBCOMMANDS, build_parser
from s3cache.config import Config, caddy_environment
from tests.stack import BIN

SETTINGS_ENV = {
    "S3CACHE_DOMAIN": "Cache-1.Example.COM.",
    "S3CACHE_BUCKET": "my-bucket.v2",
    "S3CACHE_LISTEN": "0.0.0.0:18080",
    "S3CACHE_TTL": "300",
    "S3CACHE_NODES": "10.0.0.11:8080,10.0.0.12:8080",
}


def run_caddy_env(*args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}
    return subprocess.run([str(BIN / "s3cache"), "caddy-env", "--env-file", "", *args], env={**clean, **env},
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def sourced(text: str, tmp_path) -> dict[str, str]:
    """What a POSIX shell gets from `set -a; . FILE` (as the Caddy container does)."""
    path = tmp_path / "caddy.env"
    path.write_text(text)
    out = subprocess.run(["/bin/sh", "-c", f"set -a; . '{path}'; exec {sys.executable} -c "
                          "'import json, os; print(json.dumps(dict(os.environ)))'"],
                         env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    return {k: got[k] for k in got if k.startswith("S3CACHE_")}


def test_json_is_what_s3cache_up_derives(tmp_path):
    out = run_caddy_env("--json", env=SETTINGS_ENV, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    expected = caddy_environment(Config.from_env({**SETTINGS_ENV, "S3CACHE_DIR": str(tmp_path / "cache")}))
    assert json.loads(out.stdout) == expected
    assert expected["S3CACHE_DOMAIN_RE"] == r"cache\-1\.example\.com"
    assert expected["S3CACHE_CADDY_NODES"] == "10.0.0.11:8080 10.0.0.12:8080"


def test_the_shell_lines_source_to_the_same_values(tmp_path):
    out = run_caddy_env(env=SETTINGS_ENV, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    expected = caddy_environment(Config.from_env({**SETTINGS_ENV, "S3CACHE_DIR": str(tmp_path / "cache")}))
    assert sourced(out.stdout, tmp_path) == expected


def test_output_writes_the_file_whole(tmp_path):
    target = tmp_path / "state" / "run" / "caddy.env"
    out = run_caddy_env("--output", str(target), env=SETTINGS_ENV, cwd=tmp_path)
    assert (out.returncode, out.stdout) == (0, "")
    assert sourced(target.read_text(), tmp_path)["S3CACHE_CADDY_PORT"] == "18080"
    assert [p.name for p in target.parent.iterdir()] == ["caddy.env"]  # no temp file left beside it


def test_a_bad_setting_is_one_line_and_exit_2(tmp_path):
    out = run_caddy_env(env={"S3CACHE_LISTEN": "nowhere"}, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("s3cache: configuration error: S3CACHE_LISTEN:") and out.stderr.count("\n") == 1


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.from_regex(r"S3CACHE_[A-Z_]{1,12}", fullmatch=True),
                       st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
                       max_size=4))
def test_any_value_survives_the_shell(tmp_path_factory, env):
    assert sourced(shell_lines(env), tmp_path_factory.mktemp("sh")) == env


def test_every_subcommand_module_is_registered():
    parser = build_parser()
    names = list(parser._subparsers._group_actions[0].choices)
    assert names[:6] == ["up", "evict", "warm", "stats", "reload", "caddy-env"]
    assert len(SUBCOMMANDS) == len(names)  # one subcommand per module
