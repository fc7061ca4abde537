"""``s3cache purge`` / ``s3cache ls`` and the admin API ``/_s3cache/objects`` on the real stack: odd keys
purged byte for byte through Caddy, the allow-list, a purge's DELETE never sent to S3, and the status
page's live size following fills, purges (from the command, stack running) and an eviction pass."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from s3cache.layout import ObjectRef
from tests.rawhttp import raw_get
from tests.stack import BIN, Stack, wait_until

pytestmark = pytest.mark.integration

BUCKET = "purge-tests"
GATEWAY_KEYS = (Path(__file__).parent / "data" / "gateway-keys.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)
    s3 = origin.s3()
    for key in GATEWAY_KEYS:
        s3.put_object(Bucket=BUCKET, Key=f"gw/{key}", Body=key.encode() * 3)
    return BUCKET


def cached(stack: Stack, origin, key: str) -> Path:
    assert stack.get(stack.proxied(origin.presign(BUCKET, key))).headers["X-Cache"] == "MISS"
    return stack.wait_cached(BUCKET, key)


def command(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "s3cache"), *args], env=stack.env, cwd=stack.workdir, capture_output=True,
                          text=True, timeout=120)


def live_size(stack: Stack) -> tuple[int, int]:
    disk = stack.stats()["disk"]
    return disk["cache_bytes"], disk["cache_files"]


def true_size(stack: Stack) -> tuple[int, int]:
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(stack.layout.objects_dir) for f in fs]
    return sum(sizes), len(sizes)


def test_odd_keys_are_listed_and_purged_byte_for_byte_through_caddy(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open")
    keys = [f"gw/{k}" for k in GATEWAY_KEYS]
    for key in keys:
        cached(stack, origin, key)
    listed, url = [], f"{stack.url}/_s3cache/objects?prefix={quote(BUCKET + '/gw/', safe='')}&limit=4"
    while url:
        page = requests.get(url, timeout=10)
        assert page.status_code == 200, page.text
        listed += page.json()["objects"]
        url = page.json()["next"] and stack.url + page.json()["next"]
    assert [o["key"] for o in listed] == sorted(keys)
    origin.reset()
    for o in listed:
        assert o["size"] == 3 * len(o["key"].removeprefix("gw/").encode()) and o["etag"] and o["stored"]
        resp = raw_get(stack.url, o["path"].encode("ascii"), method="DELETE")
        assert resp.status == 200, resp.body
        assert json.loads(resp.body)["objects"][0]["outcome"] == "removed"
        ref = ObjectRef(BUCKET, o["key"])
        assert not stack.layout.object_path(ref).exists() and not stack.layout.meta_path(ref).exists()
        again = stack.get(stack.proxied(origin.presign(BUCKET, o["key"])))
        assert again.headers["X-Cache"] == "MISS"  # purged: the next read goes to S3 again
    assert not [r for r in origin.stats()["requests"] if r["method"] == "DELETE"]


def test_purge_by_prefix_over_http_and_the_allow_list(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open")
    for key in ("gw/b/e.txt", "gw/b/c/d.txt", "gw/a.txt"):
        cached(stack, origin, key)
    resp = requests.delete(f"{stack.url}/_s3cache/objects?prefix={BUCKET}%2Fgw%2Fb%2F", timeout=30)
    assert resp.status_code == 200 and resp.json()["counts"]["removed"] == 2, resp.text
    assert [o["key"] for o in requests.get(f"{stack.url}/_s3cache/objects", timeout=10).json()["objects"]] \
        == ["gw/a.txt"]

    closed = make_stack(S3CACHE_ACCESS="open", S3CACHE_ADMIN_ALLOW="192.0.2.0/24")
    path = cached(closed, origin, "gw/a.txt")
    for method, target in (("DELETE", f"/_s3cache/objects/{BUCKET}/gw/a.txt"),
                           ("DELETE", f"/_s3cache/objects?prefix={BUCKET}/"), ("GET", "/_s3cache/objects")):
        refused = raw_get(closed.url, target.encode(), method=method)
        assert refused.status == 403 and b"S3CACHE_ADMIN_ALLOW" in refused.body
    assert path.exists()


@pytest.mark.parametrize("target", [
    b"/_s3cache/objects/purge-tests/x/../../../../purge-tests/gw/a.txt",
    b"/_s3cache/objects/purge-tests/x/%2e%2e/%2e%2e/%2e%2e/%2e%2e/purge-tests/gw/a.txt",
    b"/_s3cache/../purge-tests/gw/a.txt"])
def test_a_delete_under_the_admin_path_never_goes_to_s3(origin, make_stack, target):
    stack = make_stack(S3CACHE_ACCESS="open")
    path = cached(stack, origin, "gw/a.txt")
    origin.reset()
    resp = raw_get(stack.url, target, method="DELETE")
    assert resp.status in (200, 404), (resp.status, resp.headers)
    assert "location" not in resp.headers
    assert path.exists()  # dot segments name no cached object: nothing else is removed
    assert origin.stats()["requests"] == []


def test_the_command_purges_beside_a_running_stack_and_the_live_size_follows(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_EVICT_INTERVAL="3600")
    wait_until(lambda: live_size(stack) == (0, 0), 20, 0.2, what="the startup pass to be read")
    for key in ("gw/a.txt", "gw/b/e.txt", "gw/index.html", "gw/test/index.html"):
        cached(stack, origin, key)
    truth = true_size(stack)
    wait_until(lambda: live_size(stack) == truth, 15, 0.2, what="the fills to count in the live size")

    done = command(stack, "purge", f"{BUCKET}/gw/a.txt", "--prefix", f"{BUCKET}/gw/b/")
    assert done.returncode == 0, done.stderr
    assert f"removed {BUCKET}/gw/a.txt" in done.stdout and "purge: 2 removed" in done.stdout
    truth = true_size(stack)
    assert truth[1] == 2
    wait_until(lambda: live_size(stack) == truth, 15, 0.2, what="the purge to count in the live size")

    listing = command(stack, "ls", f"{BUCKET}/", "--json")
    assert listing.returncode == 0, listing.stderr
    objects = json.loads(listing.stdout)
    assert [o["key"] for o in objects] == ["gw/index.html", "gw/test/index.html"]
    assert all(o["etag"] and o["size"] and o["stored"] and o["last_access"] for o in objects)
    text = command(stack, "ls").stdout.splitlines()
    assert text[0].split() == ["SIZE", "STORED", "LAST", "ACCESS", "ETAG", "OBJECT"]
    assert [line.split()[-1] for line in text[1:]] == [f"{BUCKET}/gw/index.html", f"{BUCKET}/gw/test/index.html"]

    # An eviction pass under a cap of one object's bytes: the pass is the new base.
    evict = subprocess.run([str(BIN / "s3cache"), "evict", "--once"], cwd=stack.workdir, capture_output=True,
                           text=True, timeout=120, env={**stack.env, "S3CACHE_MAX_BYTES": str(truth[0] - 1)})
    assert evict.returncode == 0, evict.stderr
    truth = true_size(stack)
    assert truth[1] == 1
    wait_until(lambda: live_size(stack) == truth, 15, 0.2, what="the pass to count in the live size")
    cached(stack, origin, "gw/b/e.txt")
    truth = true_size(stack)
    wait_until(lambda: live_size(stack) == truth, 15, 0.2, what="a fill after the pass to count")
    page = requests.get(stack.url + "/", timeout=10).text
    assert f'data-key="cache_size" data-value="{truth[0]}"' in page

    # With the stack stopped, the commands act on the cache directory alone.
    stack.stop()
    done = command(stack, "purge", "--prefix", f"{BUCKET}/")
    assert done.returncode == 0 and "purge: 2 removed" in done.stdout, done.stdout + done.stderr
    assert command(stack, "ls", "--json").stdout.strip() == "[]"


def test_the_commands_read_dot_env_like_every_subcommand(tmp_path):
    """No stack at all: ./.env (or --env-file) names the cache directory."""
    from s3cache.layout import Layout
    layout = Layout(tmp_path / "the-cache")
    layout.ensure()
    for key in ("k/one", "k/two", "odd\tkey"):
        path = layout.object_path(ObjectRef(BUCKET, key))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"12345")
    workdir = tmp_path / "ops"
    workdir.mkdir()
    (workdir / ".env").write_text(f"S3CACHE_DIR={layout.root}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}

    def run(*args, cwd=workdir):
        return subprocess.run([str(BIN / "s3cache"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=60)
    listing = run("ls")
    assert listing.returncode == 0, listing.stderr
    # Name order; a name with a control character is JSON-quoted so each object stays on one line.
    assert [line.split()[-1] for line in listing.stdout.splitlines()[1:]] == \
        [f"{BUCKET}/k/one", f"{BUCKET}/k/two", f'"{BUCKET}/odd\\tkey"']
    done = run("purge", f"{BUCKET}/odd\tkey", f"{BUCKET}/k/none")
    assert done.returncode == 0 and "purge: 1 removed (5 bytes), 1 not cached" in done.stdout, done.stdout
    done = run("purge", "--prefix", f"{BUCKET}/k/", "--env-file", str(workdir / ".env"), "--json", cwd=tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["counts"]["removed"] == 2, done.stdout + done.stderr
    assert run("ls", "--json").stdout.strip() == "[]"
    refused = run("purge", "--prefix", BUCKET)  # a prefix must name its bucket
    assert refused.returncode == 2 and "BUCKET/" in refused.stderr
    assert run("ls", cwd=tmp_path).returncode == 1  # no .env here: ./cache does not exist
