"""The adaptive policy (S3CACHE_EVICT_POLICY=adaptive): which eviction order and admission rule the cache runs.

Neither rule wins everywhere: frequency (``lfu`` + ``tinylfu`` admission) wins
by ten points of byte hit ratio on a stable Zipf working set and loses up to
fourteen to plain recency (``lru``, every miss filled) when the working set
moves on (``bench/policysim.py``).  So each pass asks which of the two would
have done better lately, by simulating both on a sample of the traffic
(miniature caches, Waldspurger et al., "Cache Modeling and Optimization using
Miniature Simulations", ATC'17):

- **Sample.**  A key is in the sample when its hash is below a threshold
  (SHARDS's spatial sampling: a sampled key is sampled in every request).
  Each shadow cache holds that fraction of the real capacity.  The threshold
  starts at "every key" and is lowered (dropping the keys above it) whenever
  the shadows hold more than ``MAX_KEYS`` keys together, so memory and time
  are bounded whatever the cache holds (fixed-size SHARDS).
- **Shadows.**  One miniature cache per candidate in ``CANDIDATES``, run by
  the real rules: the same watermarks, the same sketch estimates (the shared
  ``run/frequency.sketch``; an object not asked for since the aging before
  last counts zero, as in ``evictor.policy``), tinylfu's boundary (the highest
  estimate among the shadow's last victims, halved when the sketch ages).
- **Score.**  Each shadow's hit bytes, decayed by half every ``HALF_LIFE`` x
  (the objects a shadow holds) sampled requests: what it would have saved *lately*.  The pass runs the
  candidate with the higher score (no data: the frequency one), but switches
  only for a lead of ``SWITCH_MARGIN``: near ties on a stable Zipf trace
  flipped admission open and shut, at a cost (``bench/policysim.py``).
- **Admission follows.**  When the recency candidate runs, the evictor
  publishes an admission boundary of 0, so ``tinylfu`` admits every miss
  (a new phase is not turned away while recency wins).

The evictor feeds it every request of the pass (hits and misses, in order,
from Caddy's access log) once the scan is done; ``bench/policysim.py`` feeds
the same object at each eviction.  A request's size is the cached file's when
the object is in the cache, else what a shadow remembers of it, else the
cache's mean object size (a redirected miss's size is not logged).  The state
is ``run/adaptive.json`` (``Layout.adaptive_file``), replaced whole each pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from s3cache import atomic

CANDIDATES = (("lfu", "tinylfu"), ("lru", "first"))  # the first is the one run without evidence
MAX_KEYS = 8192        # entries the shadows hold together: bounded state (~1 MB of JSON) at any cache size
HALF_LIFE = 0.5        # a shadow's score halves over this many times the sampled objects a shadow holds
HALF_LIFE_MIN = 64     # requests
SWITCH_MARGIN = 0.05   # how much better (a fraction) the other shadow must score to switch
HASH_SPACE = 1 << 64
VERSION = 1


class Sketch(Protocol):
    """What the shadows read of ``s3cache.sketch.FrequencySketch``."""

    def estimate(self, key: bytes) -> int: ...

    @property
    def aged_at(self) -> tuple[float, float]: ...


def key_hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"s3c-shards").digest(), "little")


@dataclass
class Shadow:
    evict: str
    admit: str
    entries: dict[bytes, list] = field(default_factory=dict)  # key -> [size, last access]
    used: int = 0
    boundary: int = 0
    score: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.evict}+{self.admit}"

    def request(self, key: bytes, size: int | None, t: float, sketch: Sketch, stale_before: float,
                limit: float, floor: float, default_size: int) -> bool:
        """One sampled request; True for a hit."""
        entry = self.entries.get(key)
        if entry is not None:
            if size is not None and size != entry[0]:
                self.used += size - entry[0]
                entry[0] = size
            entry[1] = t
            self.score += entry[0]
            return True
        if self.admit == "tinylfu" and not sketch.estimate(key) > self.boundary:
            return False
        size = default_size if size is None else size
        if size > limit:
            return False
        self.entries[key] = [size, t]
        self.used += size
        if self.used > limit:
            self._evict(sketch, stale_before, floor)
        return False

    def _evict(self, sketch: Sketch, stale_before: float, floor: float) -> None:
        entries = self.entries
        if self.evict == "lfu":
            est = {k: sketch.estimate(k) if e[1] >= stale_before else 0 for k, e in entries.items()}
            order = sorted(entries, key=lambda k: (est[k], entries[k][1]))
        else:
            est = None
            order = sorted(entries, key=lambda k: entries[k][1])
        top = 0
        for victim in order:
            if self.used <= floor:
                break
            self.used -= entries.pop(victim)[0]
            top = max(top, est[victim] if est is not None else sketch.estimate(victim))
        self.boundary = top

    def drop(self, keys: Iterable[bytes]) -> None:
        for k in keys:
            e = self.entries.pop(k, None)
            if e is not None:
                self.used -= e[0]


class Duel:
    """The shadows, the sample's threshold, and the candidate the last ``replay`` chose."""

    def __init__(self, max_keys: int = MAX_KEYS, half_life: float = HALF_LIFE):
        self.max_keys = max_keys
        self.half_life = half_life
        self.threshold = HASH_SPACE
        self.shadows = [Shadow(e, a) for e, a in CANDIDATES]
        self.aged = 0.0  # the sketch's last aging the shadows' boundaries were halved for
        self.chosen = 0
        self.sampled = 0  # sampled requests replayed, ever

    # -- choosing --------------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        return self.threshold / HASH_SPACE

    def choice(self) -> tuple[str, str]:
        """(eviction order, admission) to run now."""
        s = self.shadows[self.chosen]
        return s.evict, s.admit

    def in_sample(self, key: bytes) -> bool:
        return self.threshold >= HASH_SPACE or key_hash(key) < self.threshold

    def replay(self, requests: Iterable[tuple[bytes, int | None, float]], capacity: int, sketch: Sketch, *,
               high: float, low: float, mean_size: int) -> tuple[str, str]:
        """Feed the requests since the last replay ((key, size or None, time), in order) and choose.

        ``capacity`` is what the real cache may hold (bytes at 100%); ``high`` and
        ``low`` its watermarks as fractions.  Times are the sketch's clock's.
        """
        last, before = sketch.aged_at
        if last != self.aged:  # the sketch aged since: so did what a newcomer must beat
            for s in self.shadows:
                s.boundary >>= 1
            self.aged = last
        mean_size = max(1, int(mean_size))
        held = 0
        for key, size, t in requests:
            if not self.in_sample(key):
                continue
            self.sampled += 1
            if not self.sampled % 64 or not held:
                held = max(1, sum(len(s.entries) for s in self.shadows) // len(self.shadows))
                decay = 0.5 ** (1.0 / max(HALF_LIFE_MIN, self.half_life * held))
            limit, floor = high * capacity * self.rate, low * capacity * self.rate
            for s in self.shadows:
                s.score *= decay
                s.request(key, size, t, sketch, before, limit, floor, mean_size)
            self._bound()
        best = max(range(len(self.shadows)), key=lambda i: (self.shadows[i].score, -i))
        # Hysteresis: a near tie keeps what runs (each switch of admission costs fills or hits).
        if self.shadows[best].score > self.shadows[self.chosen].score * (1 + SWITCH_MARGIN):
            self.chosen = best
        return self.choice()

    def _bound(self) -> None:
        """Fixed-size SHARDS: when the shadows hold too many keys, lower the threshold below an eighth of them."""
        if sum(len(s.entries) for s in self.shadows) <= self.max_keys:
            return
        keys = set().union(*(s.entries for s in self.shadows))
        ranked = sorted(keys, key=key_hash)
        keep = len(ranked) * 7 // 8
        old = self.threshold
        self.threshold = key_hash(ranked[keep])
        dropped = ranked[keep:]
        for s in self.shadows:
            s.drop(dropped)
            # What the shadows hold was cached at the old rate; scale their scores to the new one.
            s.score *= self.threshold / old

    # -- state -----------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({
            "version": VERSION, "threshold": self.threshold, "aged": self.aged, "chosen": self.chosen,
            "sampled": self.sampled,
            "shadows": [{"policy": s.name, "used": s.used, "boundary": s.boundary, "score": s.score,
                         "entries": [[k.decode("latin-1"), e[0], e[1]] for k, e in s.entries.items()]}
                        for s in self.shadows]})

    @classmethod
    def from_json(cls, text: str, max_keys: int = MAX_KEYS, half_life: float = HALF_LIFE) -> "Duel":
        d = cls(max_keys, half_life)
        state = json.loads(text)
        if state.get("version") != VERSION:
            raise ValueError("another version of the adaptive state")
        saved = {s["policy"]: s for s in state["shadows"]}
        for s in d.shadows:
            got = saved.get(s.name)
            if got is None:
                continue
            s.entries = {k.encode("latin-1"): [int(size), float(t)] for k, size, t in got["entries"]}
            s.used = sum(e[0] for e in s.entries.values())
            s.boundary, s.score = int(got["boundary"]), float(got["score"])
        d.threshold = min(HASH_SPACE, int(state["threshold"]))
        d.aged, d.sampled = float(state["aged"]), int(state["sampled"])
        d.chosen = min(len(d.shadows) - 1, max(0, int(state["chosen"])))
        return d


def load(path: os.PathLike | str) -> Duel:
    """The saved state at ``path``; a fresh one when it is missing or unreadable (it only costs a warm-up)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return Duel.from_json(fh.read())
    except (OSError, ValueError, KeyError, TypeError):
        return Duel()


def save(path: os.PathLike | str, duel: Duel) -> None:
    atomic.write(path, duel.to_json())
