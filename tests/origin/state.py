"""The origin's mutable test state: request counters and armed faults.

Both are shared by waitress's worker threads, so every access takes a lock.
A request is recorded when it *arrives* and its byte count grows as chunks
are handed to the server, so a client that has read a whole response never
sees stats that lag behind it.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

FAULT_KINDS = ("slow", "truncate", "bad_etag", "status")


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []

    def begin(self, **fields: Any) -> dict[str, Any]:
        record = {"status": None, "bytes": 0, "fault": None, **fields}
        with self._lock:
            self._requests.append(record)
        return record

    def update(self, record: dict[str, Any], **fields: Any) -> None:
        with self._lock:
            record.update(fields)

    def add_bytes(self, record: dict[str, Any], n: int) -> None:
        with self._lock:
            record["bytes"] += n

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            requests = [dict(r) for r in self._requests]
        gets = [r for r in requests if r["method"] == "GET"]
        return {
            "requests": requests,
            # raw (still percent-encoded) path as received -> GET count
            "get_count_by_path": dict(Counter(r["path"] for r in gets)),
            # decoded "/bucket/key" -> GET count
            "get_count_by_key": dict(Counter(r["key"] for r in gets)),
            "body_bytes": sum(r["bytes"] for r in requests),
        }


@dataclass(frozen=True)
class Fault:
    path: str  # decoded "/bucket/key"
    kind: str
    once: bool = False
    bytes_per_sec: int = 1024
    status: int = 500
    location: str = ""  # kind "status": a Location header to send (S3's 301/307 region redirects)

    @classmethod
    def from_json(cls, data: Any) -> "Fault":
        """Validate a POST /_origin/fault body; ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        path, kind = data.get("path"), data.get("kind")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError("path must be a decoded '/bucket/key' string")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {FAULT_KINDS}")
        bps = data.get("bytes_per_sec", 1024)
        status = data.get("status", 500)
        if not isinstance(bps, int) or isinstance(bps, bool) or bps <= 0:
            raise ValueError("bytes_per_sec must be a positive integer")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        location = data.get("location", "")
        if not isinstance(location, str):
            raise ValueError("location must be a string")
        return cls(path, kind, bool(data.get("once", False)), bps, status, location)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Faults:
    """One armed fault per decoded object path; the latest POST wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}

    def arm(self, fault: Fault) -> None:
        with self._lock:
            self._faults[fault.path] = fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, path: str) -> Fault | None:
        """The fault for path, disarming it if it was armed with once."""
        with self._lock:
            fault = self._faults.get(path)
            if fault is not None and fault.once:
                del self._faults[path]
            return fault

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_json() for f in self._faults.values()]
