"""The fill's MD5 runs on a thread of its own (sidecar.fill._BackgroundMD5): same digest, no thread left behind."""

from __future__ import annotations

import gc
import hashlib
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.fill import _BackgroundMD5
from tests.stack import wait_until


@settings(max_examples=50, deadline=None)
@given(chunks=st.lists(st.binary(max_size=70_000), max_size=30))
def test_the_background_digest_is_hashlibs_for_any_chunking(chunks):
    background = _BackgroundMD5()
    for chunk in chunks:
        background.update(chunk)
    assert background.hexdigest() == hashlib.md5(b"".join(chunks)).hexdigest()
    assert background.hexdigest() == hashlib.md5(b"".join(chunks)).hexdigest()  # asked twice: the same


def hashing_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "fill-md5")


def test_a_fill_that_fails_before_its_digest_leaves_no_thread():
    before = hashing_threads()
    abandoned = _BackgroundMD5()
    for _ in range(_BackgroundMD5.QUEUED * 2):  # more than the queue holds: the thread is busy
        abandoned.update(b"x" * 65536)
    del abandoned
    gc.collect()
    wait_until(lambda: hashing_threads() == before, timeout=10, what="the hashing thread to end")
