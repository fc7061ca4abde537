"""Host-in-path URLs without HTTP: which first path segment is a host (s3cache/upstream_hosts.py),
what URL a miss goes to, and that the Caddyfile's map (run here with Python's re, as tests/caddymap.py
does) names the same file as Python or leaves the request to the sidecar.  The real Caddy runs the
same property in tests/test_host_in_path.py."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings, strategies as st

from evictor import accesslog
from s3cache.addressing import Addressing
from s3cache.config import Config, ConfigError, caddy_environment
from s3cache.layout import Layout, ObjectRef, is_valid_bucket
from s3cache.request_path import BadRequest
from s3cache.upstream_hosts import default_hosts, parse_hosts
from sidecar.traffic import Traffic
from tests.caddymap import map_entries, map_value

ROOT = Path(__file__).resolve().parent.parent
AWS = Addressing("https://s3.amazonaws.com", hosts=default_hosts("https://s3.amazonaws.com"))

FORMS = [
    # (the URL a client was given, bucket, key)
    ("https://my-bucket.s3.us-west-2.amazonaws.com/file.bin?X-Amz-Signature=ab%2Fc", "my-bucket", "file.bin"),
    ("https://s3.us-west-2.amazonaws.com/my-bucket/dir/file.bin?a=1&b", "my-bucket", "dir/file.bin"),
    ("https://s3-us-west-2.amazonaws.com/my-bucket/file.bin", "my-bucket", "file.bin"),
    ("https://s3.dualstack.eu-west-1.amazonaws.com/my-bucket/f%20g", "my-bucket", "f g"),
    ("https://my.dotted.bucket.s3.dualstack.eu-west-1.amazonaws.com/k", "my.dotted.bucket", "k"),
    ("https://s3.amazonaws.com/my-bucket/caf%C3%A9", "my-bucket", "caf\u00e9"),
    ("https://my-bucket.s3.amazonaws.com/a/b/c?Signature=x&Expires=1", "my-bucket", "a/b/c"),
    ("https://x.s3.s3.amazonaws.com/k", "x.s3", "k"),  # the global endpoint first, as AWS reads it
    ("https://my-bucket.s3-external-1.amazonaws.com/k", "my-bucket", "k"),
    ("https://my-bucket.s3.amazonaws.com:443/k", "my-bucket", "k"),
]


def host_in_path(url: str) -> str:
    """The documented rewrite: the scheme's '//' becomes the proxy's root."""
    return "/" + url.split("://", 1)[1]


@pytest.mark.parametrize("url,bucket,key", FORMS)
def test_every_aws_form_names_its_object_and_redirects_to_the_url_given(url, bucket, key):
    resolved = AWS.resolve("proxy.example:8080", host_in_path(url))
    assert resolved.parsed.ref == ObjectRef(bucket, key)
    assert resolved.upstream_url == url
    assert resolved.upstream_host == url.split("/")[2]


def test_path_style_stays_path_style():
    resolved = AWS.resolve("proxy.example", "/my-bucket/file.bin?x=1")
    assert (resolved.parsed.ref, resolved.upstream_url) == (ObjectRef("my-bucket", "file.bin"),
                                                            "https://s3.amazonaws.com/my-bucket/file.bin?x=1")
    # A dotted bucket that is no allowed host (nor under amazonaws.com, nor with a port) is a bucket.
    assert AWS.resolve("p", "/my.bucket.example.com/k").parsed.ref == ObjectRef("my.bucket.example.com", "k")


@pytest.mark.parametrize("target,code", [
    ("/evil.example.com:80/b/k", "AccessDenied"),
    ("/127.0.0.1:9000/b/k", "AccessDenied"),
    ("/foo.amazonaws.com/b/k", "AccessDenied"),
    ("/my-bucket.s3.example.amazonaws.com.evil/k", None),  # not under amazonaws.com: a bucket name
    ("/b.s3-website.us-east-1.amazonaws.com/k", "AccessDenied"),
    ("/s3.amazonaws.com%2Eevil.com/b/k", None),
    ("/s3%2Eamazonaws.com/b/k", "InvalidURI"),           # a host is written as it is
    ("/s3.amazonaws.com/", "InvalidRequest"),            # names no bucket
    ("/s3.amazonaws.com", "InvalidRequest"),
    ("/s3.amazonaws.com?list-type=2", "InvalidRequest"),
])
def test_refusals(target, code):
    if code is None:
        try:
            AWS.resolve("p", target)
        except BadRequest as exc:
            assert exc.code not in ("AccessDenied",), exc
        return
    with pytest.raises(BadRequest) as info:
        AWS.resolve("p", target)
    assert info.value.code == code


def test_a_bucket_level_request_in_host_form_goes_to_the_host():
    resolved = AWS.resolve("p", "/my-bucket.s3.amazonaws.com?list-type=2")
    assert (resolved.parsed.key, resolved.upstream_url) == ("", "https://my-bucket.s3.amazonaws.com/?list-type=2")


def test_the_host_in_path_form_is_off_where_the_host_names_a_bucket():
    addressing = Addressing("https://s3.amazonaws.com", domain="cache.test", bucket=None,
                            hosts=default_hosts("https://s3.amazonaws.com"))
    resolved = addressing.resolve("vb-1.cache.test", "/s3.amazonaws.com/x/k")
    assert resolved.parsed.ref == ObjectRef("vb-1", "s3.amazonaws.com/x/k")
    assert addressing.resolve("cache.test", "/s3.amazonaws.com/xb-1/k").parsed.ref == ObjectRef("xb-1", "k")


def test_entries_scheme_and_port():
    hosts = parse_hosts("http://127.0.0.1, minio.local:9000, http://*.localhost")
    a = Addressing("http://127.0.0.1:9000", hosts=hosts)
    assert a.resolve("p", "/127.0.0.1:9001/bkt/k").upstream_url == "http://127.0.0.1:9001/bkt/k"  # no port: any port
    assert a.resolve("p", "/127.0.0.1/bkt/k").upstream_url == "http://127.0.0.1/bkt/k"
    assert a.resolve("p", "/minio.local:9000/bkt/k").upstream_url == "https://minio.local:9000/bkt/k"
    with pytest.raises(BadRequest):
        a.resolve("p", "/minio.local:9001/bkt/k")
    r = a.resolve("p", "/bkt.localhost:4566/k?X-Amz-Date=1")
    assert (r.parsed.ref, r.upstream_url, r.virtual) == (ObjectRef("bkt", "k"), "http://bkt.localhost:4566/k?X-Amz-Date=1", True)
    # No dot and no port: a bucket, whatever the list says.
    minio = Addressing("http://minio:9000", hosts=parse_hosts("http://minio"))
    assert minio.resolve("p", "/minio/k").parsed.ref == ObjectRef("minio", "k")
    assert minio.resolve("p", "/minio:9000/bkt/k").upstream_url == "http://minio:9000/bkt/k"


def test_defaults_follow_the_upstream():
    assert Config.from_env({}).upstream_hosts == default_hosts("https://s3.amazonaws.com")
    cfg = Config.from_env({"S3CACHE_UPSTREAM": "http://MinIO.internal:9000"})
    assert [str(p) for p in cfg.upstream_hosts.patterns] == ["http://minio.internal:9000"]
    eu = Config.from_env({"S3CACHE_UPSTREAM": "https://s3.eu-west-1.amazonaws.com"})
    assert eu.upstream_hosts == default_hosts("https://s3.amazonaws.com")
    assert eu.addressing.resolve("p", "/bkt.s3.amazonaws.com/k").upstream_url == "https://bkt.s3.amazonaws.com/k"


@pytest.mark.parametrize("value", ["ftp://x.com", "a..b", "*", "*.*", "s3.*", "x.com:0", "x.com:99999", "a,,b", "a b"])
def test_bad_entries_name_the_variable(value):
    with pytest.raises(ConfigError, match="^S3CACHE_UPSTREAM_HOSTS: "):
        Config.from_env({"S3CACHE_UPSTREAM_HOSTS": value})


# --- properties ------------------------------------------------------------------------------

buckets = st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}(\.[a-z0-9][a-z0-9-]{0,8}[a-z0-9])?[a-z0-9]", fullmatch=True)
regions = st.sampled_from(["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2", "us-gov-west-1", "x"])
keys = st.text(alphabet="abcxyz/._-", min_size=1, max_size=12).filter(
    lambda k: "//" not in k and not k.startswith("/") and not k.endswith("/") and
    all(seg not in (".", "..") for seg in k.split("/")))


@st.composite
def aws_urls(draw):
    bucket, region, key = draw(buckets), draw(regions), draw(keys)
    host = draw(st.sampled_from([
        f"{bucket}.s3.amazonaws.com", f"{bucket}.s3.{region}.amazonaws.com", f"{bucket}.s3-{region}.amazonaws.com",
        f"{bucket}.s3.dualstack.{region}.amazonaws.com", "s3.amazonaws.com", f"s3.{region}.amazonaws.com",
        f"s3-{region}.amazonaws.com", f"s3.dualstack.{region}.amazonaws.com"]))
    path = f"/{key}" if host.startswith(bucket + ".") else f"/{bucket}/{key}"
    return f"https://{host}{path}", bucket, key


def spell(draw, host: str) -> str:
    host = "".join(c.upper() if draw(st.integers(0, 3)) == 0 else c for c in host)
    return host + draw(st.sampled_from(["", "", ".", ".."])) + draw(st.sampled_from(["", "", ":443", ":8080"]))


@settings(max_examples=400, deadline=None)
@given(data=st.data(), url=aws_urls(), query=st.sampled_from(["", "?X-Amz-Signature=a%2Fb&x", "?"]))
def test_any_aws_form_and_spelling_names_the_same_object(data, url, query):
    url, bucket, key = url
    host, _, path = url[len("https://"):].partition("/")
    spelled = spell(data.draw, host)
    resolved = AWS.resolve("proxy", f"/{spelled}/{path}{query}")
    assert resolved.parsed.ref == ObjectRef(bucket, key)
    assert resolved.upstream_url == f"https://{spelled}/{path}{query}"


def caddy_map(hosts=default_hosts("https://s3.amazonaws.com")):
    text = (ROOT / "Caddyfile").read_text()
    hosts = hosts.caddy_environment()
    env = {"{$S3CACHE_CADDY_HOSTS_RE:/s3cache-no-hosts\\.invalid}": hosts["S3CACHE_CADDY_HOSTS_RE"],
           "{$S3CACHE_CADDY_HOSTS_LOOSE_RE:s3cache-no-hosts\\.invalid}": hosts["S3CACHE_CADDY_HOSTS_LOOSE_RE"]}
    return map_entries(text, '"{bucket_dir}|{path}"', "{hip_file}", env)


CADDY_MAP = caddy_map()
SEGMENTS = ["s3.amazonaws.com", "b-1.s3.amazonaws.com", "s3.us-west-2.amazonaws.com", "a.b.s3.eu-west-1.amazonaws.com",
            "s3-eu-west-1.amazonaws.com", "s3.dualstack.x.amazonaws.com", "b-1", "b.example.com", "x.amazonaws.com",
            "b.s3.amazonaws.com.", "B.s3.amazonaws.com", "b.s3.amazonaws.com:443", "h:1", "S3.AMAZONAWS.COM"]


@settings(max_examples=500, deadline=None)
@given(segment=st.one_of(st.sampled_from(SEGMENTS),
                         st.text(alphabet="abs3.-:AZ.amazonwsc", min_size=1, max_size=40)),
       rest=st.sampled_from(["", "/", "/k", "/b-1/k", "/b-1/", "/a/b/c", "/b-1/caf%C3%A9"]))
@example(segment="s3.amazonaws.com", rest="/b-1/k")
@example(segment="b-1.s3.amazonaws.com", rest="/k")
def test_caddys_map_names_pythons_file_or_leaves_it_to_the_sidecar(segment, rest):
    """Where the map names a file, Python names that object; where Python reads a host or refuses,
    the map never leaves the request to the path-style lookup."""
    file = map_value(CADDY_MAP, f"|/{segment}{unquote(rest)}")  # Caddy's {path} is decoded
    try:
        resolved = AWS.resolve("proxy", f"/{segment}{rest}")
        python = f"/{resolved.parsed.bucket}/{resolved.parsed.key}" if resolved.parsed.key else None
        hip = resolved.upstream_host == segment and resolved.upstream_url != f"https://s3.amazonaws.com/{segment}{rest}"
    except BadRequest:
        python, hip = None, True
    if file not in ("", "/.host-not-canonical"):
        if python is None:  # a bucket's directory (`file` never matches one), or a bucket never filled
            assert file.count("/") == 1 or not is_valid_bucket(file.split("/")[1]), (segment, rest, file)
        else:
            assert file == python, (segment, rest, file, python)
    elif hip:
        assert file == "/.host-not-canonical" or python is None, (segment, rest, file)


def test_the_map_is_off_when_the_host_names_a_bucket():
    assert map_value(CADDY_MAP, "/vb|/s3.amazonaws.com/b/k") == ""
    assert map_value(CADDY_MAP, "|/s3.amazonaws.com/bk-1/k") == "/bk-1/k"
    assert map_value(CADDY_MAP, "|/bk-1.s3.us-west-2.amazonaws.com/k/x") == "/bk-1/k/x"


def test_a_dotless_entry_leaves_its_name_a_bucket_in_caddy_too():
    entries = caddy_map(parse_hosts("http://minio,http://127.0.0.1"))
    assert map_value(entries, "|/minio/k") == ""                    # path-style, served from disk as before
    assert map_value(entries, "|/minio:9000/bkt/k") == "/bkt/k"
    assert map_value(entries, "|/MINIO:9000/bkt/k") == "/.host-not-canonical"
    assert map_value(entries, "|/127.0.0.1./bkt/k") == "/.host-not-canonical"
    assert map_value(entries, "|/127.0.0.1/bkt/k") == "/bkt/k"


def test_caddy_env_carries_the_regexps():
    env = caddy_environment(Config.from_env({"S3CACHE_UPSTREAM_HOSTS": "http://127.0.0.1,*.s3.example.com"}))
    assert env["S3CACHE_CADDY_HOSTS_RE"] == r"/127\.0\.0\.1(?::[0-9]{1,5})?|(/[a-z0-9](?:[a-z0-9-]|\.[a-z0-9-]){1,61}" \
                                           r"[a-z0-9])\.s3\.example\.com(?::[0-9]{1,5})?"


# --- the evictor and the status page read hits in this form as the sidecar does -------------------

def test_access_log_readers_name_the_object(tmp_path):
    layout = Layout(tmp_path)
    layout.ensure()
    ref = ObjectRef("my-bucket", "dir/file.bin")
    path = layout.object_path(ref)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"12345")
    hits = {("proxy:8080", "/my-bucket.s3.us-west-2.amazonaws.com/dir/file.bin"): 2,
            ("proxy:8080", "/s3.amazonaws.com/my-bucket/dir/file.bin"): 3}
    out = accesslog.resolve(layout, hits, AWS)
    assert out == {bytes(path): 3}

    traffic = Traffic(layout, AWS)
    for (host, raw), _ in hits.items():
        traffic.feed(f'{{"ts": 1, "request": {{"method": "GET", "host": "{host}", "uri": "{raw}?x=1", "headers": {{}}}}, '
                     f'"status": 200, "size": 5, "resp_headers": {{"X-Cache": ["HIT"]}}}}'.encode())
    assert traffic.top_objects() == [{"object": "my-bucket/dir/file.bin", "bytes": 10, "hits": 2}]


def test_warm_takes_the_url_as_the_client_holds_it():
    """`s3cache warm` reads each URL through the same rule: any allowed form, fetched as written."""
    url = "https://my-bucket.s3.us-west-2.amazonaws.com/dir/file.bin?X-Amz-Signature=ab"
    resolved = AWS.resolve_url(url)
    assert (resolved.parsed.ref, resolved.upstream_url) == (ObjectRef("my-bucket", "dir/file.bin"), url)
    resolved = AWS.resolve_url("https://s3.amazonaws.com/my-bucket/k")
    assert (resolved.parsed.ref, resolved.upstream_url) == (ObjectRef("my-bucket", "k"), "https://s3.amazonaws.com/my-bucket/k")
