"""sidecar.upstream on its own: the request target goes out byte for byte, or not at all."""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sidecar.upstream import Unsendable, Upstream, sendable_target


# -- the sender on its own ------------------------------------------------------------

class _CapturingServer:
    """Accepts connections, records each request line, answers 200 with an empty body (keep-alive)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.lines: list[bytes] = []
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.lines.append(head.split(b"\r\n")[0])
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def capturing():
    server = _CapturingServer()
    yield server
    server.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e, blacklist_characters="#"),
                      max_size=60))
def test_fuzz_every_printable_ascii_target_goes_out_byte_for_byte(capturing, target):
    target = "/" + target
    upstream = Upstream()
    resp = upstream.request("GET", f"http://127.0.0.1:{capturing.port}{target}", connect_timeout=5, read_timeout=5)
    resp.read()
    resp.release_conn()
    assert capturing.lines[-1] == b"GET " + target.encode("ascii") + b" HTTP/1.1"


@pytest.mark.parametrize("target", ["/b/é", "/b/a b", "/b/\x7f", "/b/\t", "/b/a\r\nX: y", "/b/a#b", "/b/k?q#f"])
def test_a_target_http_cannot_carry_unchanged_is_never_sent(capturing, target):
    assert not sendable_target(target)
    before = len(capturing.lines)
    with pytest.raises(Unsendable):
        Upstream().request("GET", f"http://127.0.0.1:{capturing.port}{target}", connect_timeout=5, read_timeout=5)
    assert len(capturing.lines) == before


def test_a_finished_small_answer_keeps_its_connection(capturing):
    """Revalidation is on the hit path: one keep-alive connection, not a handshake per check."""
    from sidecar.upstream import done
    upstream = Upstream()
    accepted = capturing.accepted
    for i in range(5):
        resp = upstream.request("GET", f"http://127.0.0.1:{capturing.port}/k{i}", connect_timeout=5, read_timeout=5)
        assert resp.status == 200
        done(resp)
    assert capturing.accepted - accepted == 1
