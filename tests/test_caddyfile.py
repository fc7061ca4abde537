"""The Caddyfiles: formatted, valid in every mode, and in step with the Python rules they mirror."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from s3cache.request_path import SUBRESOURCES
from tests.stack import BIN

ROOT = Path(__file__).resolve().parent.parent
CADDY = str(BIN / "caddy")


def test_subresource_matcher_lists_exactly_the_python_subresources():
    text = (ROOT / "Caddyfile").read_text()
    match = re.search(r"@subresource vars_regexp \S+ \(\^\|&\)\(([^)]*)\)", text)
    assert match, "the @subresource matcher changed shape"
    assert sorted(match.group(1).split("|")) == sorted(SUBRESOURCES)


@pytest.mark.parametrize("name", ["Caddyfile", "Caddyfile.front"])
def test_caddyfiles_are_caddy_fmt_clean(name):
    path = ROOT / name
    r = subprocess.run([CADDY, "fmt", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == path.read_text(), f"run: caddy fmt --overwrite {name}"


@pytest.mark.parametrize("env", [
    {"S3CACHE_ACCESS": "open"},
    {"S3CACHE_ACCESS": "verify"},
    {"S3CACHE_ACCESS": "revalidate", "S3CACHE_DOMAIN_RE": r"cache\.example\.com", "S3CACHE_BUCKET_DIR": "/b"},
])
def test_the_node_caddyfile_adapts_in_every_access_mode(env, tmp_path):
    r = subprocess.run([CADDY, "adapt", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
                       env={**os.environ, "HOME": str(tmp_path), **env}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
