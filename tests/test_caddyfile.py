"""The Caddyfiles: formatted, valid in every mode, and in step with the Python rules they mirror."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from s3cache import wire
from s3cache.request_path import SUBRESOURCES
from tests.stack import BIN

ROOT = Path(__file__).resolve().parent.parent
CADDY = str(BIN / "caddy")


def test_subresource_matcher_lists_exactly_the_python_subresources():
    text = (ROOT / "Caddyfile").read_text()
    match = re.search(r"@subresource vars_regexp \S+ \(\^\|&\)\(([^)]*)\)", text)
    assert match, "the @subresource matcher changed shape"
    assert sorted(match.group(1).split("|")) == sorted(SUBRESOURCES)


def test_the_caddyfile_spells_the_wire_names_as_the_sidecar_does():
    text = (ROOT / "Caddyfile").read_text()
    # The headers Caddy adds on the way to the sidecar are the ones it reads.
    sent = set(re.findall(r"header_up (X-S3cache-[\w-]+) ", text))
    assert sent == {wire.RAW_URI_HEADER, wire.HOST_HEADER, wire.CLIENT_IP_HEADER, wire.SERVED_HEADER, wire.GRANT_HEADER}
    # The access check (forward_auth spelled out) asks the sidecar's auth endpoint, and clients never can.
    assert re.findall(r"^\t+rewrite (\S+)$", text, re.M) == [wire.AUTH_PATH]
    assert re.search(rf"@auth_endpoint path {re.escape(wire.AUTH_PATH)}$", text, re.M)
    # What Caddy sends to the sidecar as ours is what the sidecar treats as ours.
    internal = re.search(r"@internal path (.*)$", text, re.M).group(1).split()
    # (Caddy's "/_s3cache/*" is wire.is_internal's "/_s3cache/" prefix, the page's path among them.)
    assert wire.PREFIX + "/*" in internal
    assert {p.removesuffix("*") for p in internal} == set(wire.PAGE_PATHS)
    front = (ROOT / "Caddyfile.front").read_text()
    assert re.search(rf"@front_health path {re.escape(wire.HEALTH_PATH)}$", front, re.M)
    assert re.search(rf"health_uri {re.escape(wire.HEALTH_PATH)}$", front, re.M)
    assert re.search(r"@front_page path (.*)$", front, re.M).group(1).split() == list(wire.PAGE_PATHS)


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
