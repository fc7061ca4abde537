"""A fill's body read straight into its own buffers (sidecar.fill.Filler._receive): the cached file is
exactly what S3 sent however the bytes arrive, and a short, cut, corrupt or dripping body leaves nothing.

A real socket on 127.0.0.1 answers with hand-made HTTP, so the real urllib3/http.client path is read
(sizes that end mid-buffer, sends split anywhere, a reset, chunked framing).
"""

from __future__ import annotations

import gc
import hashlib
import random
import socket
import struct
import threading
import time
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3cache.layout import Layout, ObjectRef
from sidecar import fill
from sidecar.fill import CHUNK, Filler
from sidecar.upstream import Upstream
from tests.stack import wait_until

REF = ObjectRef("body-tests", "dir/object.bin")


class _Origin:
    """Answers each connection with ``respond(conn)`` after reading the request head."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.respond: Callable[[socket.socket], None] = lambda conn: None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        break
                    head += data
                try:
                    self.respond(conn)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def origin():
    server = _Origin()
    yield server
    server.close()


def _head(length: int, etag: str | None = None, extra: str = "") -> bytes:
    tag = f'ETag: "{etag}"\r\n' if etag else ""
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n{tag}{extra}"
            f"Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n").encode()


def _fill(tmp_path, origin: _Origin, respond, **kw) -> tuple[fill.FillResult, Layout]:
    layout = Layout(tmp_path / "cache")
    layout.ensure()
    origin.respond = respond
    upstream = Upstream()
    try:
        filler = Filler(layout, workers=1, timeout=kw.pop("timeout", 10), max_object_bytes=None, upstream=upstream,
                        **kw)
        return filler.fill(REF, f"{origin.url}/body-tests/dir/object.bin"), layout
    finally:
        upstream.close()


def _nothing_left(layout: Layout) -> bool:
    return not layout.object_path(REF).exists() and not list(layout.tmp_dir.iterdir())


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    return [body[a:b] for a, b in zip(points, points[1:])]


def _sender(parts: list[bytes], head: bytes, pause: float = 0.0):
    def respond(conn: socket.socket) -> None:
        conn.sendall(head)
        for part in parts:
            conn.sendall(part)
            if pause:
                time.sleep(pause)
    return respond


SIZES = st.sampled_from([0, 1, 4095, 65536, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 12345]) | \
    st.integers(min_value=0, max_value=3 * CHUNK)


@settings(max_examples=25, deadline=None)
@given(size=SIZES, cuts=st.lists(st.integers(min_value=0), max_size=12), md5=st.booleans(), seed=st.integers(0, 9))
def test_the_cached_file_is_the_body_however_it_arrives(tmp_path_factory, origin, size, cuts, md5, seed):
    body = random.Random(seed).randbytes(size)
    etag = hashlib.md5(body).hexdigest() if md5 else None
    result, layout = _fill(tmp_path_factory.mktemp("f"), origin, _sender(_split(body, cuts), _head(size, etag)))
    assert result.outcome == "filled", result
    assert layout.object_path(REF).read_bytes() == body
    assert not list(layout.tmp_dir.iterdir())


@pytest.mark.parametrize("md5", [True, False], ids=["md5-etag", "other-etag"])
@pytest.mark.parametrize("sent", [0, 1, CHUNK - 1, CHUNK, CHUNK + 7], ids=lambda n: f"cut-after-{n}")
def test_a_body_cut_short_leaves_nothing(tmp_path, origin, md5, sent):
    body = random.Random(sent).randbytes(2 * CHUNK + 100)
    etag = hashlib.md5(body).hexdigest() if md5 else None
    result, layout = _fill(tmp_path, origin, _sender([body[:sent]], _head(len(body), etag)))
    assert (result.outcome, result.reason) == ("failed", "truncated")
    assert _nothing_left(layout)
    # The abandoned digest's thread ends too: buffers lent to it do not keep the digest alive.
    gc.collect()
    wait_until(lambda: not any(t.name == "fill-md5" for t in threading.enumerate()), timeout=10,
               what="the hashing thread of the abandoned fill to end")


def test_a_connection_reset_mid_body_leaves_nothing(tmp_path, origin):
    body = random.Random(3).randbytes(2 * CHUNK)

    def respond(conn: socket.socket) -> None:
        conn.sendall(_head(len(body)) + body[:CHUNK + 5])
        time.sleep(0.1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    result, layout = _fill(tmp_path, origin, respond)
    assert (result.outcome, result.reason) == ("failed", "truncated")
    assert _nothing_left(layout)


@pytest.mark.parametrize("flip", [0, CHUNK - 1, CHUNK, 3 * CHUNK // 2, 2 * CHUNK + 99], ids=lambda n: f"byte-{n}")
def test_a_body_that_does_not_match_its_md5_etag_leaves_nothing(tmp_path, origin, flip):
    body = bytearray(random.Random(flip).randbytes(2 * CHUNK + 100))
    etag = hashlib.md5(body).hexdigest()
    body[flip] ^= 0x01
    result, layout = _fill(tmp_path, origin, _sender([bytes(body)], _head(len(body), etag)))
    assert (result.outcome, result.reason) == ("failed", "md5-mismatch")
    assert _nothing_left(layout)


def test_a_buffer_is_read_into_again_only_once_hashed(tmp_path, origin, monkeypatch):
    """A hash far slower than the socket: the reader waits for a buffer rather than overwrite one not yet hashed."""
    body = random.Random(7).randbytes(6 * CHUNK + 5)
    etag = hashlib.md5(body).hexdigest()
    real_md5 = hashlib.md5

    class SlowMD5:
        def __init__(self):
            self._md5 = real_md5()

        def update(self, data) -> None:
            time.sleep(0.05)  # the reader meanwhile receives the next megabytes
            self._md5.update(data)

        def hexdigest(self) -> str:
            return self._md5.hexdigest()

    monkeypatch.setattr(fill.hashlib, "md5", SlowMD5)
    monkeypatch.setattr(fill._CacheFile, "BUFFERS", 2)
    result, layout = _fill(tmp_path, origin, _sender([body], _head(len(body), etag)))
    assert result.outcome == "filled", result
    assert layout.object_path(REF).read_bytes() == body


def test_a_chunked_body_is_cached_without_its_framing(tmp_path, origin):
    """Transfer-Encoding wins over Content-Length (RFC 9112): such a body is read through http.client."""
    body = random.Random(5).randbytes(CHUNK + 3000)
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in _split(body, [1000, CHUNK])) + b"0\r\n\r\n"
    result, layout = _fill(tmp_path, origin, _sender([framed], _head(len(body), hashlib.md5(body).hexdigest(),
                                                                     "Transfer-Encoding: chunked\r\n")))
    assert result.outcome == "filled", result
    assert layout.object_path(REF).read_bytes() == body


def test_a_dripping_body_is_abandoned_at_its_deadline(tmp_path, origin):
    body = b"d" * 4000
    # Every send well inside the read timeout, but the whole far slower than S3CACHE_FILL_MIN_RATE allows.
    started = time.monotonic()
    result, layout = _fill(tmp_path, origin, _sender(_split(body, list(range(0, 4000, 100))), _head(len(body)),
                                                     pause=0.05),
                           timeout=1.0, min_rate=1_000_000)
    assert (result.outcome, result.reason) == ("failed", "too-slow")
    assert time.monotonic() - started < 1.9  # 40 sends of 50 ms: abandoned before the last
    assert _nothing_left(layout)


def test_a_plain_response_is_read_from_the_socket_directly(origin):
    """The fast path must stay taken: if urllib3 or http.client change underneath, this says so."""
    body = b"x" * 5000
    origin.respond = _sender([body], _head(len(body)))
    upstream = Upstream()
    try:
        resp = upstream.request("GET", f"{origin.url}/b/k", connect_timeout=5, read_timeout=5)
        try:
            reader = fill._raw_body(resp, len(body))
            assert reader is not None
            assert fill._raw_body(resp, len(body) + 1) is None  # not the length S3 announced: go through urllib3
            buffer = bytearray(len(body))
            got = 0
            while got < len(body):
                got += reader.readinto1(memoryview(buffer)[got:])
            assert bytes(buffer) == body
        finally:
            resp.close()
    finally:
        upstream.close()
