"""A byte-exact HTTP/1.1 client for tests: the request target goes out exactly as given.

``requests`` re-encodes raw non-ASCII bytes and cuts at ``#``; http.client refuses
non-ASCII targets.  Odd paths need a socket.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, latin-1 text
    body: bytes = b""


def raw_get(url_base: str, target: bytes, headers: dict[str, str] | None = None, method: str = "GET",
            timeout: float = 30) -> RawResponse:
    """Send ``method target`` to ``url_base`` (``http://127.0.0.1:PORT``) and read the whole answer."""
    hostport = url_base.split("://", 1)[1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    head = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: " + hostport.encode(), b"Connection: close"]
    for k, v in (headers or {}).items():
        head.append(k.encode("latin-1") + b": " + v.encode("latin-1"))
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return parse_response(data, method)


def parse_response(data: bytes, method: str = "GET") -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    elif "content-length" in headers and method != "HEAD":
        body = body[: int(headers["content-length"])]
    return RawResponse(status, headers, body)
