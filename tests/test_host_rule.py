"""Caddy serves the file of the object the request names, or nothing: for any Host and raw path.

The real stack (S3CACHE_DOMAIN set) in front of the signature-checking origin, with a cache whose
files each hold their own "<bucket>/<key>", including path-style look-alikes of virtual-hosted
objects (``public-att/vic-bucket/secret`` beside ``vic-bucket/secret``).  Hypothesis sends Hosts
in any case, with trailing dots, ports, brackets, other domains and garbage, and raw request
targets byte for byte (a socket, not ``requests``).  Whenever the answer is a 200/206 HIT, its body
must be the file of the object ``Addressing.resolve(host, target)`` names; otherwise it is a
refusal or a redirect.  In ``verify`` and ``revalidate`` the request is signed (SigV2) for the
object Python names, so the checks let hits through and the property has teeth.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from s3cache.addressing import Addressing
from s3cache.request_path import BadRequest
from tests.origin.credentials import ACCESS_KEY_1, SECRET_KEY_1
from tests.stack import BIN, Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent

DOMAIN = "s3cache.test"
ATTACKER = "public-att"   # the test origin serves public-* buckets to anyone
VICTIM = "vic-bucket"
OBJECTS = [
    (VICTIM, "secret"),
    (ATTACKER, f"{VICTIM}/secret"),    # the path-style look-alike of the victim's object
    (ATTACKER, "secret"),
    (VICTIM, f"{ATTACKER}/secret"),
    (ATTACKER, "caf\u00e9"),
]
BODIES = {f"{bucket}/{key}".encode() for bucket, key in OBJECTS}
EXAMPLES = 300


@pytest.fixture(scope="module")
def upstream(origin):
    """The origin under a name whose subdomains are buckets (reached through it as an HTTP proxy)."""
    for bucket in (ATTACKER, VICTIM):
        origin.ensure_bucket(bucket)
    for bucket, key in OBJECTS:
        origin.s3().put_object(Bucket=bucket, Key=key, Body=f"{bucket}/{key}".encode())
    return origin.url.replace("127.0.0.1", "localhost")


def start(origin, make_stack, upstream, mode: str):
    stack = make_stack(S3CACHE_UPSTREAM=upstream, S3CACHE_DOMAIN=DOMAIN, S3CACHE_ACCESS=mode,
                       S3CACHE_SIGNING_KEYS=f"{ACCESS_KEY_1}:{SECRET_KEY_1}",
                       HTTP_PROXY=origin.url, NO_PROXY="")
    return fill(origin, stack)


def fill(origin, stack):
    """Cache every object through the proxy (a miss, then the background fill)."""
    for bucket, key in OBJECTS:
        url = origin.presign(bucket, key, version="v2").replace(origin.url, stack.url)
        status, headers, _ = send(stack.port, "127.0.0.1", url[len(stack.url):].encode("utf-8"))
        assert status == 307 and headers.get("X-Cache") == "MISS", (bucket, key, status)
        stack.wait_cached(bucket, key)
    return stack


def send(port: int, host: str | bytes, target: bytes, timeout: float = 20) -> tuple[int, dict, bytes]:
    """One GET with this Host and request target, byte for byte."""
    host_bytes = host if isinstance(host, bytes) else host.encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + host_bytes + b"\r\nConnection: close\r\n\r\n")
        resp = http.client.HTTPResponse(sock, method="GET")
        resp.begin()
        body = resp.read()
        return resp.status, {k: v for k, v in resp.getheaders()}, body


def sign_v2(virtual_bucket: str | None, raw_path: bytes) -> bytes:
    """A SigV2 query for this exact path, as S3 (and the origin) read it."""
    expires = str(int(time.time()) + 3600)
    resource = (b"/" + virtual_bucket.encode() if virtual_bucket else b"") + raw_path
    mac = hmac.new(SECRET_KEY_1.encode(), b"GET\n\n\n" + expires.encode() + b"\n" + resource, hashlib.sha1)
    signature = quote(base64.b64encode(mac.digest()).decode(), safe="")
    return f"AWSAccessKeyId={ACCESS_KEY_1}&Expires={expires}&Signature={signature}".encode()


# --- what hypothesis sends --------------------------------------------------------------------

LABELS = [ATTACKER, VICTIM, ATTACKER, VICTIM, "secret", "nobucket", "ab", "a..b", "my_bucket", ""]


def spell(draw, name: str) -> str:
    """Another spelling of a host name: case, trailing dots, a port, brackets."""
    name = "".join(c.upper() if draw(st.integers(0, 2)) == 0 else c for c in name)
    name += draw(st.sampled_from(["", "", "", ".", ".."]))
    port = draw(st.sampled_from(["", "", ":80", ":", ":abc", ":1:2"]))
    if draw(st.integers(0, 5)) == 0:
        return f"[{name}]{port}"
    return name + port


@st.composite
def hosts(draw, label: str | None = None) -> str:
    if label is not None:
        return spell(draw, label + "." + DOMAIN)
    kind = draw(st.sampled_from(["vhost", "vhost", "domain", "plain", "garbage"]))
    if kind == "garbage":
        return draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]%",
                            min_size=1, max_size=30))
    if kind == "plain":
        return draw(st.sampled_from(["127.0.0.1", "localhost", f"{ATTACKER}.other.test", "[::1]"]))
    return spell(draw, DOMAIN if kind == "domain" else draw(st.sampled_from(LABELS)) + "." + DOMAIN)


def encode(draw, text: str) -> bytes:
    """``text`` with each character sent raw (UTF-8) or percent-encoded in either case."""
    out = []
    for c in text:
        raw = c.encode("utf-8")
        how = 2 if c == "/" else draw(st.integers(0, 5))
        out.append("".join(f"%{b:02X}" for b in raw).encode() if how == 0 else
                   "".join(f"%{b:02x}" for b in raw).encode() if how == 1 else raw)
    return b"".join(out)


@st.composite
def requests_(draw) -> tuple[str, bytes, bool, bool]:
    """(Host, raw path, absolute-form?, signed?): mostly a cached object asked for in either style
    under some spelling of its Host, else odd segments near the cached names, else arbitrary bytes."""
    kind = draw(st.integers(0, 9))
    if kind < 6:
        bucket, key = draw(st.sampled_from(OBJECTS))
        if draw(st.booleans()):
            host, path = draw(hosts(bucket)), encode(draw, "/" + key)
        else:
            host, path = draw(hosts()), encode(draw, f"/{bucket}/{key}")
    elif kind < 9:
        host = draw(hosts())
        segments = draw(st.lists(st.sampled_from([ATTACKER, VICTIM, "secret", "caf\u00e9", "x", ".", "..", ""]),
                                 min_size=1, max_size=4))
        path = encode(draw, "/" + "/".join(segments))
    else:
        host = draw(hosts())
        # Anything but what would end the request line or split the header block.
        path = b"/" + draw(st.binary(max_size=30)).replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")
    path += draw(st.sampled_from([b"", b"", b"", b"/"]))
    absolute = draw(st.integers(0, 9)) == 0
    signed = draw(st.integers(0, 4)) != 0
    return host, path, absolute, signed


def expected_body(addressing: Addressing, host: str, target: bytes) -> bytes | None:
    """The bytes of the object Python says this request names (None: nothing may be served)."""
    if target.startswith(b"http://"):
        # Absolute form: the URI's authority is the Host (RFC 9112 3.2.2), as Go reads it.
        authority, _, rest = target[len(b"http://"):].partition(b"/")
        host, target = authority.decode("latin-1"), b"/" + rest
    try:
        ref = addressing.resolve(host, target.decode("latin-1")).parsed.ref
    except BadRequest:
        return None
    return f"{ref.bucket}/{ref.key}".encode() if (ref.bucket, ref.key) in OBJECTS else None


def check_property(stack, upstream, request) -> None:
    host, path, absolute, signed = request
    addressing = Addressing(upstream, domain=DOMAIN)
    target = path
    if signed:
        try:
            resolved = addressing.resolve(host, path.decode("latin-1"))
            target = path + b"?" + sign_v2(resolved.parsed.bucket if resolved.virtual else None, path)
        except BadRequest:
            pass
    if absolute:
        target = b"http://" + host.encode("latin-1") + target
    status, headers, body = send(stack.port, host, target)
    want = expected_body(addressing, host, target)
    if status in (200, 206) and headers.get("X-Cache") == "HIT":
        assert want is not None, f"served {body!r} for an object Python does not name"
        assert body == want, f"served {body!r}, the request names {want!r}"
    else:  # a refusal, a redirect, or one of our pages (status, health): never an object's bytes
        assert body not in BODIES, (status, headers, body)


@pytest.mark.parametrize("mode", ["open", "verify", "revalidate"])
def test_the_served_file_is_the_object_the_request_names(origin, make_stack, upstream, mode):
    stack = start(origin, make_stack, upstream, mode)
    hits = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(request=requests_())
    @example(request=(f"{ATTACKER.upper()}.{DOMAIN}", f"/{VICTIM}/secret".encode(), False, True))
    @example(request=(f"[{VICTIM}.{DOMAIN}]:80", f"/{ATTACKER}/secret".encode(), False, True))
    def prop(request):
        check_property(stack, upstream, request)

    prop()
    # The checks let signed requests through, else the property would hold vacuously.
    for host, path, bucket in [(f"{ATTACKER}.{DOMAIN}", b"/secret", ATTACKER),
                               ("127.0.0.1", f"/{VICTIM}/secret".encode(), None)]:
        status, headers, body = send(stack.port, host, path + b"?" + sign_v2(bucket, path))
        assert (status, headers.get("X-Cache")) == (200, "HIT"), (host, path, status, body[:300])


SPELLINGS = [f"{ATTACKER.upper()}.{DOMAIN}", f"Public-Att.{DOMAIN}", f"{ATTACKER}.{DOMAIN}.",
             f"{ATTACKER}.{DOMAIN}.:80", f"[{ATTACKER}.{DOMAIN}]:80", f"{ATTACKER}.{DOMAIN.upper()}.."]


@pytest.mark.parametrize("mode", ["open", "verify", "revalidate"])
def test_a_bucket_owner_cannot_read_a_path_style_look_alike(origin, make_stack, upstream, mode):
    """The attacker's own public object at key "vic-bucket/secret", asked for under another spelling
    of their bucket's Host, must not unlock the victim's cached "vic-bucket/secret"."""
    stack = start(origin, make_stack, upstream, mode)
    path = f"/{VICTIM}/secret".encode()
    for host in SPELLINGS:
        for target in (path, path + b"?" + sign_v2(ATTACKER, path)):
            status, headers, body = send(stack.port, host, target)
            assert body != f"{VICTIM}/secret".encode(), (host, target, status, headers)
            if status in (200, 206):
                assert body == f"{ATTACKER}/{VICTIM}/secret".encode(), (host, target, status, body)
    if mode == "open":
        return  # open gives every cached object to anyone who names it
    # Brackets: Go reads "[vic-bucket.<domain>]:80" as the victim's bucket; so must the check.
    path = f"/{ATTACKER}/secret".encode()
    for target in (path, path + b"?" + sign_v2(None, path)):
        status, headers, body = send(stack.port, f"[{VICTIM}.{DOMAIN}]:80", target)
        assert body != f"{VICTIM}/{ATTACKER}/secret".encode(), (target, status, headers)


ODD_KEYS = {"caf\u00e9": "HIT", "sp ace": "HIT", "trail ": "HIT", "pipe|": "HIT",
            # No header can carry a control character to the check: these are never looked up on disk.
            "a\x01b": "MISS", "tab\tx": "MISS", "del\x7fx": "MISS"}


@pytest.mark.parametrize("mode", ["verify", "revalidate"])
def test_the_served_file_check_passes_odd_keys_and_never_answers_502(origin, make_stack, mode):
    origin.ensure_bucket(ATTACKER)
    stack = make_stack(S3CACHE_ACCESS=mode, S3CACHE_SIGNING_KEYS=f"{ACCESS_KEY_1}:{SECRET_KEY_1}")
    for key, outcome in ODD_KEYS.items():
        origin.s3().put_object(Bucket=ATTACKER, Key=key, Body=key.encode())
        path = f"/{ATTACKER}/{quote(key, safe='/')}".encode()
        status, headers, _ = send(stack.port, "127.0.0.1", path + b"?" + sign_v2(None, path))
        assert (status, headers.get("X-Cache")) == (307, "MISS"), key
        stack.wait_cached(ATTACKER, key)
        status, headers, body = send(stack.port, "127.0.0.1", path + b"?" + sign_v2(None, path))
        if outcome == "HIT":
            assert (status, headers.get("X-Cache"), body) == (200, "HIT", key.encode()), key
        else:
            assert (status, headers.get("X-Cache")) == (307, "MISS"), key


class StackWithCaddyfile(Stack):
    """The stack run with another Caddyfile (`s3cache up --caddyfile`)."""

    def __init__(self, workdir, upstream, caddyfile, **env):
        super().__init__(workdir, upstream, **env)
        self.caddyfile = caddyfile

    def start(self, timeout: float = 20.0) -> "StackWithCaddyfile":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(BIN / "s3cache"), "up", "--caddyfile", str(self.caddyfile)],
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.wait_healthy(timeout)
        return self


@pytest.mark.parametrize("mode", ["verify", "revalidate"])
def test_the_check_refuses_a_file_caddy_matched_for_another_object(origin, upstream, tmp_path, mode):
    """Defense in depth: with a Caddyfile whose bucket map reads a Host differently from Python
    (the case-sensitive map this project once had), the check still refuses, since the file Caddy
    matched is not the object it authorized."""
    text = (ROOT / "Caddyfile").read_text()
    lines = [line for line in text.splitlines(keepends=True)
             if not line.lstrip().startswith("~(?i)") and "not vars {bucket_dir}" not in line]
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text("".join(lines))
    assert "host-not-canonical" not in caddyfile.read_text().split("root *")[0].split("map {")[1]
    stack = StackWithCaddyfile(tmp_path / "stack", upstream, caddyfile, S3CACHE_DOMAIN=DOMAIN, S3CACHE_ACCESS=mode,
                               S3CACHE_SIGNING_KEYS=f"{ACCESS_KEY_1}:{SECRET_KEY_1}",
                               HTTP_PROXY=origin.url, NO_PROXY="")
    try:
        stack.start()
        fill(origin, stack)
        path = f"/{VICTIM}/secret".encode()
        status, headers, body = send(stack.port, f"{ATTACKER.upper()}.{DOMAIN}", path + b"?" + sign_v2(ATTACKER, path))
        assert (status, headers.get("X-Cache")) == (403, "DENIED"), (status, headers, body)
        assert body != f"{VICTIM}/secret".encode()
    finally:
        stack.stop()
