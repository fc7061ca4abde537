"""Issue 16: the adaptive policy (S3CACHE_EVICT_POLICY=adaptive, ``evictor.adaptive``) on hand-made traces.

The duel itself, fed the way ``bench/policysim.py`` and the evictor feed it
(every request counted in a sketch, replayed in batches, as passes do); then
through real eviction passes over a temp cache and its access log: the pass
runs the winner, opens admission while recency wins, and the state survives
a restart (``run/adaptive.json``).
"""

from __future__ import annotations

import json
import random

import pytest

from evictor import adaptive
from s3cache.sketch import FrequencySketch
from tests.test_admission_eviction import ask, key_of, sketch_of
from tests.test_evictor import NOW, Cache, caddy_line, ns_ago

SIZE = 1000
CAPACITY = 10 * SIZE  # ten objects; the watermarks (90/80%) leave nine before a pass cuts to eight


def drive(duel: adaptive.Duel, sketch: FrequencySketch, trace: list[str], t0: int = 0, every: int = 20) -> list:
    """Count each request (as the sidecar and the evictor do), replay them every ``every``; the choices made."""
    clock = [t0]
    sketch.clock = lambda: clock[0]
    pending, choices = [], []
    for t, name in enumerate(trace, start=t0):
        clock[0] = t
        sketch.add(name.encode())
        pending.append((name.encode(), SIZE, float(t)))
        if len(pending) == every:
            choices.append(duel.replay(pending, CAPACITY, sketch, high=0.9, low=0.8, mean_size=SIZE))
            pending = []
    return choices


def zipf(names: list[str], n: int, rng: random.Random) -> list[str]:
    return rng.choices(names, weights=[1 / (r + 1) for r in range(len(names))], k=n)


def test_a_stable_popular_set_with_scans_runs_frequency():
    rng = random.Random(1)
    hot = [f"hot{i}" for i in range(30)]
    trace = []
    for s in range(40):  # Zipf over 30 objects (3x the cache), a one-off scan of 10 new objects now and then
        trace += zipf(hot, 40, rng)
        if s % 4 == 0:
            trace += [f"scan{s}-{j}" for j in range(10)]
    duel = adaptive.Duel()
    choices = drive(duel, FrequencySketch.in_memory(window=400), trace)
    assert choices[-1] == ("lfu", "tinylfu")
    lfu, lru = duel.shadows
    assert lfu.score > lru.score  # frequency kept the popular head through the scans; recency did not


def test_a_shifting_working_set_switches_to_recency_and_back_to_frequency_on_zipf():
    rng = random.Random(2)
    sketch = FrequencySketch.in_memory(window=100)  # ten times the objects the cache holds, as the evictor sets it
    duel = adaptive.Duel()
    old = [f"a{i}" for i in range(8)]
    choices = drive(duel, sketch, [o for _ in range(30) for o in old])  # a stable set that fits: a tie
    assert choices[-1] == ("lfu", "tinylfu")
    # The working set moves on to eight new objects: frequency still holds (and admits against) the old.
    new = [f"b{i}" for i in range(8)]
    choices = drive(duel, sketch, [o for _ in range(20) for o in rng.sample(new, 8)], t0=240)
    assert choices[-1] == ("lru", "first")
    assert duel.shadows[1].score > duel.shadows[0].score
    # Then a skewed trace over many objects, where the popular head pays: back to frequency.
    many = [f"z{i}" for i in range(60)]
    choices = drive(duel, sketch, zipf(many, 6000, rng), t0=400)
    assert choices[-1] == ("lfu", "tinylfu")


def test_the_sample_is_bounded_whatever_the_cache_holds():
    rng = random.Random(3)
    duel = adaptive.Duel(max_keys=64)
    sketch = FrequencySketch.in_memory(window=10_000)
    names = [f"o{i}" for i in range(5000)]
    pending = []
    for t, name in enumerate(zipf(names, 20_000, rng)):
        sketch.add(name.encode())
        pending.append((name.encode(), SIZE, float(t)))
    duel.replay(pending, 1000 * SIZE, sketch, high=0.9, low=0.8, mean_size=SIZE)
    assert sum(len(s.entries) for s in duel.shadows) <= 64
    assert 0 < duel.rate < 1 and all(adaptive.key_hash(k) < duel.threshold for s in duel.shadows for k in s.entries)
    assert 0 < duel.sampled < 20_000


def test_the_state_round_trips_and_a_bad_file_only_costs_a_warm_up(tmp_path):
    sketch = FrequencySketch.in_memory(window=100_000)
    duel = adaptive.Duel()
    drive(duel, sketch, [f"a{i % 8}" for i in range(200)])
    drive(duel, sketch, [f"b{i % 8}" for i in range(200)], t0=200)
    path = tmp_path / "adaptive.json"
    adaptive.save(path, duel)
    again = adaptive.load(path)
    assert again.choice() == duel.choice() == ("lru", "first")
    assert again.to_json() == duel.to_json()
    path.write_text("{not json")
    assert adaptive.load(path).choice() == adaptive.CANDIDATES[0]
    assert adaptive.load(tmp_path / "missing.json").choice() == adaptive.CANDIDATES[0]


# -- through eviction passes --------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache")


def requests(cache: Cache, names: list[str], t0: float) -> None:
    """One request per name, in order: a miss the first time a name is seen (counted as the sidecar counts
    it), a hit after; all in Caddy's log, where the evictor replays them from."""
    seen = set()
    lines = []
    for i, name in enumerate(names):
        hit = name in seen
        seen.add(name)
        if not hit:
            ask(cache, name)
        lines.append(caddy_line(f"/bkt/{name}", t0 + i * 0.001, x_cache="HIT" if hit else "MISS"))
    cache.log(*lines)


def test_an_eviction_pass_runs_recency_after_a_shift_opens_admission_and_remembers_across_restarts(cache):
    old = [f"a{i}" for i in range(8)]
    for i, name in enumerate(old):
        cache.put(name, SIZE, atime_ns=ns_ago(2 - i * 0.01))
    requests(cache, [o for _ in range(15) for o in old], NOW - 3600)
    s = cache.run(S3CACHE_MAX_BYTES=str(CAPACITY))
    assert s.policy == "lfu+tinylfu" and s.evicted_files == 0
    assert json.loads(cache.layout.adaptive_file.read_text())["chosen"] == 0

    # The working set moves on: seven new objects, filled, each asked for again and again.
    new = [f"b{i}" for i in range(7)]
    requests(cache, [o for _ in range(12) for o in new], NOW - 1800)
    for i, name in enumerate(new):
        cache.put(name, SIZE, atime_ns=ns_ago(0.4 - i * 0.01))
    sketch = sketch_of(cache)
    sketch.boundary = 15  # what frequency's last pass would have made newcomers beat
    sketch.close()
    s = cache.run(S3CACHE_MAX_BYTES=str(CAPACITY))
    assert s.policy == "lru+first"
    # Recency's order: the old set goes, the new stays (frequency would have kept the old set, asked for more).
    assert s.evicted_files == 8 and not any(cache.has(o) for o in old) and all(cache.has(n) for n in new)
    sketch = sketch_of(cache)
    assert sketch.boundary == 0  # tinylfu admits every miss while recency wins
    assert sketch.estimate(key_of(cache, "a0")) > sketch.estimate(key_of(cache, "b0"))
    sketch.close()

    # A restart: a new pass with nothing new in the log carries on from run/adaptive.json.
    s = cache.run(S3CACHE_MAX_BYTES=str(CAPACITY))
    assert s.policy == "lru+first"
    cache.layout.adaptive_file.unlink()  # without the state, no evidence: frequency, the fallback
    assert cache.run(S3CACHE_MAX_BYTES=str(CAPACITY)).policy == "lfu+tinylfu"


def test_lfu_and_lru_stay_selectable_and_leave_no_adaptive_state(cache):
    cache.put("a", SIZE, atime_ns=ns_ago(1))
    requests(cache, ["a", "a"], NOW - 60)
    assert cache.run(S3CACHE_MAX_BYTES=str(CAPACITY), S3CACHE_EVICT_POLICY="lru").policy == "lru"
    assert cache.run(S3CACHE_MAX_BYTES=str(CAPACITY), S3CACHE_EVICT_POLICY="lfu").policy == "lfu"
    assert not cache.layout.adaptive_file.exists()
