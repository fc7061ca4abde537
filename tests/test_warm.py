"""`s3cache warm URLS_FILE` fills exactly what was listed, and says what failed and why."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.stack import BIN, Stack

pytestmark = pytest.mark.integration

BUCKET = "warm-tests"


def test_warm_fills_exactly_what_was_listed(origin, tmp_path):
    s3 = origin.s3()
    s3.create_bucket(Bucket=BUCKET)
    for i in range(6):
        s3.put_object(Bucket=BUCKET, Key=f"listed/{i}.bin", Body=os.urandom(1000 + i))
    s3.put_object(Bucket=BUCKET, Key="not-listed.bin", Body=b"stays cold")
    s3.put_object(Bucket=BUCKET, Key="listed/already.bin", Body=b"cached before")
    cache = Stack(tmp_path, origin.url)  # only for its paths; no stack runs
    cache.layout.ensure()
    pre = cache.object_file(BUCKET, "listed/already.bin")
    pre.parent.mkdir(parents=True, exist_ok=True)
    pre.write_bytes(b"cached before")

    lines = ["# build artifacts for Monday", ""]
    lines += [origin.presign(BUCKET, f"listed/{i}.bin", version="v4" if i % 2 else "v2") for i in range(6)]
    lines.append(origin.presign(BUCKET, "listed/already.bin"))
    lines.append(origin.presign(BUCKET, "listed/forbidden.bin", secret="wrong"))          # 403
    lines.append(origin.presign(BUCKET, "listed/missing.bin"))                             # 404
    lines.append(origin.presign(BUCKET, "listed/a//b.bin"))                                # uncacheable key
    lines.append("not a url")
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(lines) + "\n")

    origin.reset()
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}
    env.update(S3CACHE_UPSTREAM=origin.url, S3CACHE_DIR=str(cache.cache_dir))
    r = subprocess.run([str(BIN / "s3cache"), "warm", str(urls), "--parallel", "3"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # some lines failed
    assert "11 URLs: 6 filled" in r.stdout and "1 already cached" in r.stdout and "4 failed" in r.stdout
    assert "status-403" in r.stdout and "status-404" in r.stdout
    assert "not cacheable" in r.stdout and "bad URL" in r.stdout
    assert "url/s" in r.stderr or "100%" in r.stderr  # the progress bar

    for i in range(6):
        assert cache.object_file(BUCKET, f"listed/{i}.bin").stat().st_size == 1000 + i
    assert pre.read_bytes() == b"cached before"
    assert not cache.object_file(BUCKET, "not-listed.bin").exists()
    cached = sorted(str(p.relative_to(cache.layout.objects_dir)) for p in cache.layout.objects_dir.rglob("*") if p.is_file())
    assert cached == sorted([f"{BUCKET}/listed/{i}.bin" for i in range(6)] + [f"{BUCKET}/listed/already.bin"])
    gets = [q for q in origin.stats()["requests"] if q["method"] == "GET"]
    assert len(gets) == 8  # six fills, the 403 and the 404; nothing for the cached or uncacheable lines
    assert not list(cache.layout.tmp_dir.iterdir())
