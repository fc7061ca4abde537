"""The proxy as an S3 endpoint for SDKs: boto3 and the aws CLI with endpoint_url = the proxy.

End to end, as a person would use them: the real stack, real boto3, the real aws CLI, and the test
origin, which checks the SigV4 signature the proxy makes with its own credentials (ACCESS_KEY_2) for
every request it sends -- the clients sign with ACCESS_KEY_1, which only the proxy checks.
The snippets README's "Use it from boto3 / the aws CLI" shows are the ones run here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.origin.credentials import ACCESS_KEY_1, ACCESS_KEY_2, SECRET_KEY_1, SECRET_KEY_2

pytestmark = pytest.mark.integration

BUCKET = "sdk-tests"
AWS = Path(sys.executable).with_name("aws")
# No credentials from this machine's own AWS setup, and never a metadata service off loopback.
NO_AWS_ENV = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
              "AWS_SESSION_TOKEN": "", "AWS_PROFILE": "", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
              "AWS_CONFIG_FILE": "/nonexistent"}
SDK_ENV = {"S3CACHE_SIGNING_KEYS": f"{ACCESS_KEY_1}:{SECRET_KEY_1}",
           "S3CACHE_UPSTREAM_ACCESS_KEY_ID": ACCESS_KEY_2, "S3CACHE_UPSTREAM_SECRET_ACCESS_KEY": SECRET_KEY_2,
           "S3CACHE_UPSTREAM_REGION": "us-east-1", "S3CACHE_ADMIT": "first", **NO_AWS_ENV}


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)


@pytest.fixture
def sdk_stack(make_stack):
    return make_stack(**SDK_ENV)


def client(stack, secret: str = SECRET_KEY_1, requests: list | None = None, **config):
    # The README's snippet: path-style, since the proxy's name has no wildcard DNS (S3CACHE_DOMAIN).
    s3 = boto3.client("s3", endpoint_url=stack.url, region_name="us-east-1",
                      aws_access_key_id=ACCESS_KEY_1, aws_secret_access_key=secret,
                      config=Config(s3={"addressing_style": "path"}, **config))
    if requests is not None:
        s3.meta.events.register("before-send.s3", lambda request, **_: requests.append(request.method))
    return s3


def origin_requests(origin, key: str | None = None, method: str | None = None) -> list[dict]:
    return [r for r in origin.stats()["requests"]
            if (key is None or r["key"] == f"/{BUCKET}/{key}") and (method is None or r["method"] == method)]


def x_cache(response) -> str:
    return response["ResponseMetadata"]["HTTPHeaders"].get("x-cache", "")


@pytest.mark.parametrize("access", ["revalidate", "verify", "open"])
def test_get_object_miss_streams_and_fills_then_hits_come_from_disk(origin, make_stack, access):
    """Whatever S3CACHE_ACCESS says: the client's signature is what is checked."""
    sdk_stack = make_stack(**SDK_ENV, S3CACHE_ACCESS=access)
    key = f"get/{access}/report.csv"
    body = os.urandom(300_000)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body, ContentType="text/csv")
    origin.reset()
    s3 = client(sdk_stack)

    miss = s3.get_object(Bucket=BUCKET, Key=key)
    assert (miss["Body"].read(), miss["ContentType"], x_cache(miss)) == (body, "text/csv", "MISS")
    sdk_stack.wait_cached(BUCKET, key)

    hit = s3.get_object(Bucket=BUCKET, Key=key)
    assert (hit["Body"].read(), hit["ContentType"], x_cache(hit)) == (body, "text/csv", "HIT")
    assert hit["ETag"] == miss["ETag"]
    part = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=100-199")
    assert (part["Body"].read(), part["ContentRange"], x_cache(part)) == (body[100:200], f"bytes 100-199/{len(body)}", "HIT")
    with pytest.raises(ClientError) as not_modified:
        s3.get_object(Bucket=BUCKET, Key=key, IfNoneMatch=miss["ETag"])
    assert not_modified.value.response["Error"]["Code"] == "304"
    overridden = s3.get_object(Bucket=BUCKET, Key=key, ResponseContentType="application/x-report")
    assert (overridden["ContentType"], overridden["Body"].read()) == ("application/x-report", body)
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert (head["ContentLength"], head["ETag"], head["ContentType"], x_cache(head)) == (len(body), miss["ETag"], "text/csv", "HIT")

    # One GET at the origin for the miss and every hit, signed by the proxy with its own key (checked there).
    gets = origin_requests(origin, key, "GET")
    assert [(r["auth"], r["status"]) for r in gets] == [("header-v4", 200)]


def test_head_object_miss_is_relayed_re_signed(origin, sdk_stack):
    key = "head/only.bin"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"12345", Metadata={"owner": "ops"})
    origin.reset()
    head = client(sdk_stack).head_object(Bucket=BUCKET, Key=key)
    # Caddy (Go) spells header names canonically (X-Amz-Meta-Owner): boto3 hands the key over as spelled.
    metadata = {k.lower(): v for k, v in head["Metadata"].items()}
    assert (head["ContentLength"], metadata, x_cache(head)) == (5, {"owner": "ops"}, "MISS")
    assert [(r["method"], r["auth"]) for r in origin_requests(origin, key)] == [("HEAD", "header-v4")]
    with pytest.raises(ClientError) as missing:
        client(sdk_stack).head_object(Bucket=BUCKET, Key="head/absent")
    assert missing.value.response["Error"]["Code"] == "404"


def test_download_file_multipart_ranges_fetch_the_object_once(origin, sdk_stack, tmp_path):
    key = "transfer/big.bin"
    body = os.urandom(3 * 1024 * 1024 + 123)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    origin.reset()
    s3 = client(sdk_stack)
    chunks = TransferConfig(multipart_threshold=256 * 1024, multipart_chunksize=256 * 1024, max_concurrency=4)
    for n in range(2):  # the miss, then hits
        target = tmp_path / f"big{n}.bin"
        s3.download_file(BUCKET, key, str(target), Config=chunks)
        assert target.read_bytes() == body
    assert len(origin_requests(origin, key, "GET")) == 1
    assert sdk_stack.object_file(BUCKET, key).read_bytes() == body


def test_listings_head_bucket_and_location_pass_through_uncached(origin, sdk_stack):
    keys = [f"list/{i:02d}.txt" for i in range(5)]
    for k in keys:
        origin.s3().put_object(Bucket=BUCKET, Key=k, Body=k.encode())
    s3 = client(sdk_stack)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="list/")
    assert [o["Key"] for o in listed["Contents"]] == keys
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="list/", PaginationConfig={"PageSize": 2})
    assert [o["Key"] for page in pages for o in page["Contents"]] == keys
    assert s3.head_bucket(Bucket=BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_location(Bucket=BUCKET)["LocationConstraint"] in (None, "us-east-1")
    origin.reset()
    s3.list_objects_v2(Bucket=BUCKET, Prefix="list/")
    assert [r["auth"] for r in origin.stats()["requests"]] == ["header-v4"]  # asked again: never cached
    with pytest.raises(ClientError) as absent:
        s3.head_bucket(Bucket="no-such-bucket-here")
    assert absent.value.response["Error"]["Code"] == "404"


def test_put_object_is_refused_at_once_with_one_request(origin, sdk_stack):
    origin.reset()
    sent: list[str] = []
    with pytest.raises(ClientError) as refused:
        client(sdk_stack, requests=sent).put_object(Bucket=BUCKET, Key="put/x.txt", Body=b"data")
    assert refused.value.response["Error"]["Code"] == "NotImplemented"
    assert "S3CACHE_SDK_WRITES" in refused.value.response["Error"]["Message"]
    assert sent == ["PUT"]
    assert origin.stats()["requests"] == []


@pytest.mark.parametrize("cached", [False, True])
def test_a_wrong_secret_is_signature_does_not_match(origin, sdk_stack, cached):
    key = f"secret/{cached}.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"private")
    if cached:
        client(sdk_stack).get_object(Bucket=BUCKET, Key=key)["Body"].read()
        sdk_stack.wait_cached(BUCKET, key)
    for operation in ("get_object", "head_object"):
        with pytest.raises(ClientError) as refused:
            getattr(client(sdk_stack, secret="not-the-secret"), operation)(Bucket=BUCKET, Key=key)
        code = refused.value.response["Error"]["Code"]
        assert code == ("SignatureDoesNotMatch" if operation == "get_object" else "403"), operation


@pytest.mark.parametrize("missing", ["keys", "credentials"])
def test_without_the_settings_one_clear_error(origin, make_stack, missing):
    env = dict(SDK_ENV)
    if missing == "keys":
        del env["S3CACHE_SIGNING_KEYS"]
        env["S3CACHE_ACCESS"] = "open"
    else:
        del env["S3CACHE_UPSTREAM_ACCESS_KEY_ID"], env["S3CACHE_UPSTREAM_SECRET_ACCESS_KEY"]
    stack = make_stack(**env)
    origin.s3().put_object(Bucket=BUCKET, Key="setup/x.txt", Body=b"x")
    sent: list[str] = []
    with pytest.raises(ClientError) as refused:
        client(stack, requests=sent).get_object(Bucket=BUCKET, Key="setup/x.txt")
    error = refused.value.response["Error"]
    assert error["Code"] == "AccessDenied"
    assert ("S3CACHE_SIGNING_KEYS" if missing == "keys" else "S3CACHE_UPSTREAM_ACCESS_KEY_ID") in error["Message"]
    assert sent == ["GET"]


def test_passthrough_writes_drop_the_cached_copy(origin, make_stack):
    stack = make_stack(**SDK_ENV, S3CACHE_SDK_WRITES="passthrough")
    key = "write/doc.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"old")
    s3 = client(stack)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"old"
    stack.wait_cached(BUCKET, key)
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"new body")
    assert not stack.object_file(BUCKET, key).exists()
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"new body"
    stack.wait_cached(BUCKET, key)
    s3.delete_object(Bucket=BUCKET, Key=key)
    assert not stack.object_file(BUCKET, key).exists()
    with pytest.raises(ClientError) as gone:
        s3.get_object(Bucket=BUCKET, Key=key)
    assert gone.value.response["Error"]["Code"] == "NoSuchKey"


def aws(stack, *args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY_1, "AWS_SECRET_ACCESS_KEY": SECRET_KEY_1,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
                "HOME": str(home)})
    return subprocess.run([str(AWS), "--endpoint-url", stack.url, *args], env=env, capture_output=True,
                          timeout=120)


def test_aws_cli(origin, sdk_stack, tmp_path):
    key = "cli/data.txt"
    body = b"".join(b"line %05d\n" % i for i in range(2000))
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    origin.reset()

    cp = aws(sdk_stack, "s3", "cp", f"s3://{BUCKET}/{key}", "-", home=tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == body
    sdk_stack.wait_cached(BUCKET, key)

    ls = aws(sdk_stack, "s3", "ls", f"s3://{BUCKET}/cli/", home=tmp_path)
    assert ls.returncode == 0, ls.stderr
    assert b"data.txt" in ls.stdout and str(len(body)).encode() in ls.stdout

    out = tmp_path / "range.out"
    ranged = aws(sdk_stack, "s3api", "get-object", "--bucket", BUCKET, "--key", key, "--range", "bytes=10-29",
                 str(out), home=tmp_path)
    assert ranged.returncode == 0, ranged.stderr
    assert out.read_bytes() == body[10:30]
    assert b'"ContentRange": "bytes 10-29/' in ranged.stdout

    assert len(origin_requests(origin, key, "GET")) == 1


def test_sigv2_clients_too(origin, sdk_stack):
    key = "v2/object.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"signed the old way")
    s3 = client(sdk_stack, signature_version="s3")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"signed the old way"
    sdk_stack.wait_cached(BUCKET, key)
    hit = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=7-9")
    assert (hit["Body"].read(), x_cache(hit)) == (b"the", "HIT")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="v2/")["Contents"]] == [key]
    with pytest.raises(ClientError) as refused:
        client(sdk_stack, secret="wrong", signature_version="s3").get_object(Bucket=BUCKET, Key=key)
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_an_authorization_header_never_gets_a_redirect_nor_unchecked_bytes(origin, make_stack):
    """Whatever the method, path form or Authorization value: no 3xx, and a cached object's bytes only
    for a valid signature -- even with S3CACHE_ACCESS=open, where Caddy serves other hits unchecked."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.stack import raw_request

    stack = make_stack(**SDK_ENV, S3CACHE_ACCESS="open")
    key = "guard/secret.txt"
    secret_body = b"cached and private " * 10
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=secret_body)
    client(stack).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    stack.wait_cached(BUCKET, key)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"]),
           target=st.sampled_from([f"/{BUCKET}/{key}", f"/{BUCKET}/{key}?acl", f"/{BUCKET}/{key}?x-id=GetObject",
                                   f"/{BUCKET}//{key}", f"/{BUCKET}/guard/../{key}", f"/{BUCKET}/", f"/{BUCKET}",
                                   f"/{BUCKET}/guard/missing.txt", f"/{BUCKET}/{key}?versionId=1"]),
           auth=st.sampled_from(["", "AWS x:y", "Bearer token", "AWS4-HMAC-SHA256 garbage",
                                 f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_1}/20260101/us-east-1/s3/aws4_request, "
                                 "SignedHeaders=host, Signature=00"]))
    def check(method, target, auth):
        resp = raw_request(method, stack.url + target, headers={"Authorization": auth})
        assert not 300 <= resp.status_code < 400, (resp.status_code, resp.headers)
        assert secret_body not in resp.content
        assert resp.headers.get("X-Cache") != "HIT"
        if method != "HEAD":
            assert resp.content.startswith(b"<?xml"), resp.content[:200]

    check()


def test_through_the_front_tier(origin, make_stack, tmp_path):
    from tests.stack import FrontStack, wait_until

    nodes = [make_stack(**SDK_ENV) for _ in range(2)]
    front = FrontStack(tmp_path / "front", origin.url, nodes, **SDK_ENV).start()
    try:
        key = "front/object.txt"
        origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"sharded")
        s3 = client(front)
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"sharded"
        holders = wait_until(lambda: [n for n in nodes if n.object_file(BUCKET, key).is_file()], what="a node's copy")
        assert len(holders) == 1
        hit = s3.get_object(Bucket=BUCKET, Key=key)
        assert (hit["Body"].read(), x_cache(hit)) == (b"sharded", "HIT")
        sent: list[str] = []
        with pytest.raises(ClientError) as refused:
            client(front, requests=sent).put_object(Bucket=BUCKET, Key=key, Body=b"new")
        assert refused.value.response["Error"]["Code"] == "NotImplemented"
        assert sent == ["PUT"]
    finally:
        front.stop()


def test_the_access_log_holds_no_signature_nor_session_token(origin, sdk_stack):
    from tests.stack import wait_until

    key = "logged/object.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"logged")
    signatures: list[str] = []
    s3 = boto3.client("s3", endpoint_url=sdk_stack.url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY_1,
                      aws_secret_access_key=SECRET_KEY_1, aws_session_token="session-token-SECRET",
                      config=Config(s3={"addressing_style": "path"}))
    s3.meta.events.register("before-send.s3", lambda request, **_: signatures.append(
        request.headers["Authorization"].decode() if isinstance(request.headers["Authorization"], bytes)
        else request.headers["Authorization"]))
    s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    sdk_stack.wait_cached(BUCKET, key)
    with pytest.raises(ClientError):
        s3.get_object(Bucket=BUCKET, Key=key + "?last")  # NoSuchKey: the last line we wait for
    log = wait_until(lambda: (t := (sdk_stack.layout.logs_dir / "access.log").read_text()) and "%3Flast" in t and t,
                     what="the last request in the access log")
    assert "session-token-SECRET" not in log
    for auth in signatures:
        assert auth.rpartition("Signature=")[2] not in log


def test_an_object_too_large_to_cache_is_still_downloaded_in_parts(origin, make_stack, tmp_path):
    stack = make_stack(**SDK_ENV, S3CACHE_MAX_OBJECT_BYTES="100000")
    key = "transfer/too-large.bin"
    body = os.urandom(600_000)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    target = tmp_path / "out.bin"
    chunks = TransferConfig(multipart_threshold=128 * 1024, multipart_chunksize=128 * 1024, max_concurrency=3)
    client(stack).download_file(BUCKET, key, str(target), Config=chunks)
    assert target.read_bytes() == body
    assert not stack.object_file(BUCKET, key).exists()
    assert client(stack).get_object(Bucket=BUCKET, Key=key)["Body"].read() == body


def test_with_a_ttl_a_stale_hit_is_revalidated_and_a_changed_object_never_served(origin, make_stack):
    stack = make_stack(**SDK_ENV, S3CACHE_TTL="0.001")  # every hit is stale: asked at S3 first
    key = "ttl/doc.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"first")
    s3 = client(stack)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"first"
    stack.wait_cached(BUCKET, key)
    origin.reset()
    hit = s3.get_object(Bucket=BUCKET, Key=key)
    assert (hit["Body"].read(), x_cache(hit)) == (b"first", "HIT")
    assert [(r["method"], r["auth"], r["status"]) for r in origin.stats()["requests"]] == [("HEAD", "header-v4", 304)]
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"second")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"second"  # after one SlowDown, retried
    origin.s3().delete_object(Bucket=BUCKET, Key=key)
    stack.wait_cached(BUCKET, key)
    with pytest.raises(ClientError) as gone:
        s3.get_object(Bucket=BUCKET, Key=key)
    assert gone.value.response["Error"]["Code"] == "NoSuchKey"
    assert not stack.object_file(BUCKET, key).exists()


def readme_block(lang: str, after: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index(after):]
    start = section.index(f"```{lang}\n") + len(f"```{lang}\n")
    return section[start:section.index("```", start)]


def test_the_readme_snippets_run_as_written(origin, make_stack, tmp_path, monkeypatch):
    """README's "Use it from boto3 / the aws CLI" snippets, with only the proxy's address and keys swapped."""
    stack = make_stack(**SDK_ENV)
    origin.ensure_bucket("my-bucket")
    report = b"".join(b"%d,%d\n" % (i, i * i) for i in range(500))
    big = os.urandom(9 * 1024 * 1024)
    origin.s3().put_object(Bucket="my-bucket", Key="report.csv", Body=report)
    origin.s3().put_object(Bucket="my-bucket", Key="big.bin", Body=big)
    origin.s3().put_object(Bucket="my-bucket", Key="reports/2026.csv", Body=b"x")

    def ours(code: str) -> str:
        return (code.replace("http://localhost:8080", stack.url).replace("AKIACLIENTKEY", ACCESS_KEY_1)
                .replace("client-secret", SECRET_KEY_1))

    heading = "## Use it from boto3 / the aws CLI"
    monkeypatch.chdir(tmp_path)
    origin.reset()
    exec(compile(ours(readme_block("python", heading)), "README.md", "exec"), {})
    assert (tmp_path / "big.bin").read_bytes() == big
    assert len(origin_requests_in(origin, "my-bucket", "big.bin", "GET")) == 1

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"PATH": f"{AWS.parent}:{env.get('PATH', '')}", "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials")})
    shell = ours(readme_block("sh", "```python\nimport boto3"))  # the aws CLI block, after the boto3 one
    run = subprocess.run(["bash", "-euc", shell], cwd=tmp_path, env=env, capture_output=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert report in run.stdout and b"report.csv" in run.stdout
    assert (tmp_path / "part.csv").read_bytes() == report[:100]
    assert len(origin_requests_in(origin, "my-bucket", "report.csv", "GET")) == 1


def origin_requests_in(origin, bucket: str, key: str, method: str) -> list[dict]:
    return [r for r in origin.stats()["requests"] if r["key"] == f"/{bucket}/{key}" and r["method"] == method]


def test_list_buckets_is_relayed_not_the_status_page(origin, sdk_stack, tmp_path):
    names = [b["Name"] for b in client(sdk_stack).list_buckets()["Buckets"]]
    assert BUCKET in names
    ls = aws(sdk_stack, "s3", "ls", home=tmp_path)
    assert ls.returncode == 0, ls.stderr
    assert BUCKET.encode() in ls.stdout


def test_virtual_hosted_clients_with_a_domain(origin, make_stack):
    """endpoint_url = http://<S3CACHE_DOMAIN> (wildcard DNS): boto3 puts the bucket in the Host. Here the
    client's requests go to 127.0.0.1 with the Host it signed; the origin is reached as an HTTP proxy, so
    that <bucket>.localhost names its bucket, as S3 does."""
    import urllib3
    from botocore.awsrequest import AWSResponse

    domain = "s3cache.test"
    stack = make_stack(**SDK_ENV, S3CACHE_DOMAIN=domain, S3CACHE_UPSTREAM=origin.url.replace("127.0.0.1", "localhost"),
                       HTTP_PROXY=origin.url, NO_PROXY="")
    pool = urllib3.HTTPConnectionPool("127.0.0.1", stack.port)

    class Raw:
        def __init__(self, data: bytes):
            self.data, self.at = data, 0

        def stream(self, **_):
            yield self.data

        def read(self, n=-1):
            chunk = self.data[self.at:] if n is None or n < 0 else self.data[self.at:self.at + n]
            self.at += len(chunk)
            return chunk

    def send_to_the_stack(request, **_):
        parts = urlsplit(request.url)
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        headers["Host"] = parts.netloc
        r = pool.urlopen(request.method, parts.path + ("?" + parts.query if parts.query else ""), body=request.body,
                         headers=headers, redirect=False, retries=False)
        return AWSResponse(request.url, r.status, dict(r.headers), Raw(r.data))

    key = "vhost/object.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"virtually hosted")
    origin.reset()
    for version in ("s3v4", "s3"):
        s3 = boto3.client("s3", endpoint_url=f"http://{domain}:{stack.port}", region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY_1, aws_secret_access_key=SECRET_KEY_1,
                          config=Config(signature_version=version, s3={"addressing_style": "virtual"}))
        s3.meta.events.register("before-send.s3", send_to_the_stack)
        got = s3.get_object(Bucket=BUCKET, Key=key)
        assert got["Body"].read() == b"virtually hosted"
        stack.wait_cached(BUCKET, key)
        hit = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-8")
        assert (hit["Body"].read(), x_cache(hit)) == (b"virtually", "HIT")
        assert key in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="vhost/")["Contents"]]
    assert [r["auth"] for r in origin_requests(origin, key, "GET")] == ["header-v4"]  # the miss, re-signed
