"""Which bucket a Host names: one rule (s3cache/addressing.py), and the Caddyfile's map agrees with it.

Host names are case-insensitive, may end in dots and carry a port.  Caddy serves a virtual-hosted
file from disk only when its map names the same bucket Python's rule names; every other Host under
S3CACHE_DOMAIN gets a marker that keeps it off the disk.  The map is read from the Caddyfile itself
and run here with Python's ``re`` (its regexps use only syntax RE2 and ``re`` read alike), on the
host Caddy would see (Go's net.SplitHostPort, mirrored by addressing.split_host_port).  The real
Caddy is checked against the same property in tests/test_host_rule.py.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from s3cache.addressing import Addressing, canonical_host, split_host_port
from tests.caddymap import Entries, map_entries, map_value

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "s3cache.test"
MARKER = "/.host-not-canonical"

# Go's net.SplitHostPort, as Caddy's {http.request.host} uses it (the whole value when Go errs);
# the bracket cases were measured against Caddy 2.11.7.
GO_SPLIT = [
    ("pub.s3cache.test", "pub.s3cache.test"),
    ("pub.s3cache.test:80", "pub.s3cache.test"),
    ("pub.s3cache.test:", "pub.s3cache.test"),
    ("pub.s3cache.test:abc", "pub.s3cache.test"),
    ("pub.s3cache.test.:99", "pub.s3cache.test."),
    ("PUB.s3cache.test:80:90", "PUB.s3cache.test:80:90"),
    ("[pub.s3cache.test]:80", "pub.s3cache.test"),
    ("[pub.s3cache.test]", "[pub.s3cache.test]"),
    ("[pub.s3cache.test:5]:80", "pub.s3cache.test:5"),
    ("[::1]:80", "::1"),
    ("[::1]", "[::1]"),
    ("::1", "::1"),
    ("a:b:c", "a:b:c"),
    ("[a]x:80", "[a]x:80"),
    ("[a]:b:c", "[a]:b:c"),
    ("a[b]:80", "a[b]:80"),
    ("a]:80", "a]:80"),
    ("", ""),
]


@pytest.mark.parametrize("hostport,host", GO_SPLIT)
def test_the_port_is_split_off_as_go_does_it(hostport, host):
    assert split_host_port(hostport) == host


@functools.lru_cache(maxsize=None)
def caddy_map(bucket_dir: str) -> Entries:
    """The Caddyfile's `map {http.request.host} {bucket_dir}` entries, with the environment filled in."""
    return map_entries((ROOT / "Caddyfile").read_text(), "{http.request.host}", "{bucket_dir}",
                       {"{$S3CACHE_DOMAIN_RE:s3cache-no-domain\\.invalid}": re.escape(DOMAIN),
                        "{$S3CACHE_BUCKET_DIR}": bucket_dir})


# Bytes Go accepts in a Host header (httpguts.ValidHostHeader), and a few it does not.
HOST_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]!$&'()*+,;=~%"
LABELS = ["public-att", "vic-bucket", "Public-Att", "PUBLIC-ATT", "ab", "a..b", "a.b-c", "my_bucket",
          "-ab", "ab-", "x" * 70, "", "s3cache", "test"]


@st.composite
def hosts(draw) -> str:
    kind = draw(st.sampled_from(["vhost", "domain", "garbage"]))
    if kind == "garbage":
        return draw(st.text(alphabet=HOST_CHARS, max_size=40))
    name = DOMAIN if kind == "domain" else draw(st.sampled_from(LABELS)) + "." + DOMAIN
    name = "".join(c.upper() if draw(st.booleans()) and draw(st.booleans()) else c for c in name)
    name = draw(st.sampled_from(["", "x.", "."])) + name + draw(st.sampled_from(["", "", ".", ".."]))
    port = draw(st.sampled_from(["", "", ":80", ":", ":abc", ":1:2"]))
    if draw(st.booleans()) and draw(st.booleans()):
        return f"[{name}]{port}"
    return name + port


@pytest.mark.parametrize("bucket", [None, "one-bucket"])
@settings(max_examples=1000, deadline=None)
@given(host=hosts())
def test_caddy_serves_from_disk_only_the_bucket_python_names(bucket, host):
    addressing = Addressing("https://s3.amazonaws.com", domain=DOMAIN, bucket=bucket)
    default = f"/{bucket}" if bucket else ""
    caddy = map_value(caddy_map(default), split_host_port(host.strip(" \t")))
    python = addressing.bucket_for_host(host)
    if caddy == MARKER:
        return  # never served from disk: the sidecar answers it under Python's bucket
    if python is None or python == bucket:
        assert caddy == default, (caddy, python)
    else:
        assert caddy == "/" + python, (caddy, python)


@given(host=hosts())
@settings(max_examples=500)
def test_case_trailing_dots_and_port_do_not_change_the_bucket(host):
    addressing = Addressing("https://s3.amazonaws.com", domain=DOMAIN)
    name = split_host_port(host)
    bucket = addressing.bucket_for_host(host)
    assert addressing.bucket_for_host(host.swapcase()) == bucket
    assert addressing.bucket_for_host(name) == addressing.bucket_for_host(name.rstrip(".") + ".")
    if ":" not in name and "[" not in name and "]" not in name:
        for port in ("", ":80", ":8080", ":"):
            assert addressing.bucket_for_host(name + port) == bucket
    assert canonical_host(host) == canonical_host(host).lower()
    assert not canonical_host(host).endswith(".")


@pytest.mark.parametrize("host,bucket", [
    ("PUBLIC-ATT.s3cache.test", "public-att"),
    ("public-att.s3cache.test.", "public-att"),
    ("Public-Att.S3Cache.Test.:8080", "public-att"),
    ("[public-att.s3cache.test]:80", "public-att"),
    ("s3cache.test", None),
    ("S3CACHE.TEST.", None),
    ("public-att.other.test", None),
    ("[public-att.s3cache.test]", None),  # Go keeps the brackets: not a name under the domain
])
def test_spellings_of_one_host(host, bucket):
    assert Addressing("https://s3.amazonaws.com", domain=DOMAIN).bucket_for_host(host) == bucket


@pytest.mark.parametrize("served,relative,same", [
    ("/b/k|", "b/k", True),
    ("/b/caf\u00c3\u00a9|", "b/caf\u00e9", True),   # the UTF-8 bytes, as waitress decodes a header (latin-1)
    ("/b/trail |", "b/trail ", True),
    ("/b/k", "b/k", False),                          # no terminator: cut short somewhere
    ("/B/k|", "b/k", False),
    ("/b/k/|", "b/k", False),
    ("b/k|", "b/k", False),
    (None, "b/k", False),
    ("/b/caf\u00e9|", "b/caf\u00e9", False),        # not what Caddy sends for that key
])
def test_the_served_file_header_names_exactly_one_object(served, relative, same):
    from sidecar.access import serves_object
    assert serves_object(served, relative) is same
