"""The egress benchmark's cache simulations (bench/cachesim.py) on tiny traces: correctness, no timing."""

from __future__ import annotations

import random

import pytest

from bench.cachesim import next_uses, simulate_belady, simulate_lru, zipf_lognormal_workload


def test_next_uses():
    assert next_uses([1, 2, 1, 3, 2]) == [2, 4, float("inf"), float("inf"), float("inf")]


def test_lru_by_hand():
    # capacity 2 unit objects: a b a c b -> a b miss, a hit, c evicts b, b evicts a
    r = simulate_lru([0, 1, 0, 2, 1], [1, 1, 1], capacity=2)
    assert (r.hits, r.origin_bytes, r.client_bytes) == (1, 4, 5)


def test_belady_by_hand():
    # Same trace: Belady keeps b (needed again) and bypasses c (never needed again).
    r = simulate_belady([0, 1, 0, 2, 1], [1, 1, 1], capacity=2)
    assert (r.hits, r.origin_bytes) == (2, 3)


@pytest.mark.parametrize("seed", range(5))
def test_belady_never_loses_to_lru_with_equal_sizes(seed):
    rng = random.Random(seed)
    trace = [rng.randrange(30) for _ in range(600)]
    sizes = [1] * 30
    for capacity in (1, 3, 10, 29):
        lru, opt = simulate_lru(trace, sizes, capacity), simulate_belady(trace, sizes, capacity)
        assert opt.hits >= lru.hits


def test_ratios_are_fractions_and_bounded_by_compulsory_misses():
    w = zipf_lognormal_workload(objects=50, requests=800, seed=3)
    everything = sum(w.sizes)
    for capacity in (0, everything // 10, everything):
        watermarks = simulate_lru(w.trace, w.sizes, capacity, 0.9, 0.8)
        for r in (simulate_lru(w.trace, w.sizes, capacity), watermarks, simulate_belady(w.trace, w.sizes, capacity)):
            assert 0.0 <= r.hit_ratio <= 1.0 and 0.0 <= r.byte_hit_ratio <= 1.0
            assert r.client_bytes == sum(w.sizes[i] for i in w.trace)
            # Every distinct object must be fetched once at least.
            assert r.origin_bytes >= w.working_set_bytes
            if capacity == 0:
                assert r.hits == 0
            if capacity == everything and r is not watermarks:  # watermarks never fill past 90%
                assert r.origin_bytes == w.working_set_bytes


def test_more_capacity_never_hurts_belady_and_ideal_lru():
    w = zipf_lognormal_workload(objects=80, requests=1500, seed=4)
    caps = [w.working_set_bytes * f // 100 for f in (5, 10, 20, 40)]
    for sim in (simulate_belady, simulate_lru):
        ratios = [sim(w.trace, w.sizes, c).byte_hit_ratio for c in caps]
        # LRU with sizes is not strictly a stack algorithm; allow a hair of slack there.
        assert all(b >= a - 0.02 for a, b in zip(ratios, ratios[1:])), (sim.__name__, ratios)


def test_workload_is_deterministic_and_zipf_skewed():
    a, b = zipf_lognormal_workload(100, 2000, seed=9), zipf_lognormal_workload(100, 2000, seed=9)
    assert a == b
    counts = sorted((a.trace.count(i) for i in set(a.trace)), reverse=True)
    assert counts[0] > 5 * counts[len(counts) // 2]  # the head is far hotter than the median object


def test_policysim_lru_first_is_the_reference_lru_and_traces_are_seeded():
    from bench import policysim, traces
    w = traces.make("scan", 60, 900)
    assert w.trace == traces.make("scan", 60, 900).trace  # fixed seed: the same trace every run
    for capacity in (w.working_set_bytes // 10, w.working_set_bytes // 3):
        ref = simulate_lru(w.trace, w.sizes, capacity)  # policysim's default: the cap filled whole, as s3cache runs it
        ours = policysim.simulate(w.trace, w.sizes, capacity, evict="lru", admit="first")
        assert (ours.hits, ours.miss_bytes) == (ref.hits, ref.origin_bytes)
        # redirect mode pays each filled miss twice; stream once
        assert ours.redirect_origin_per_client >= ours.stream_origin_per_client


def test_policysim_tinylfu_declines_one_off_objects_once_the_cache_has_evicted():
    from bench import policysim
    # Unit sizes, capacity 4 (watermarks 100%/75%): a b c d e fills and evicts; the next pass (one after
    # every request here) publishes what that removed as the boundary; then one-offs x y z are asked once
    # each and must not displace a/b, which are asked for again and again.
    trace = [0, 1, 0, 1, 2, 3, 4, 0, 1, 5, 6, 7, 0, 1]
    r = policysim.simulate(trace, [1] * 8, 4, evict="lfu", admit="tinylfu", high=1.0, low=0.75, pass_every=1)
    assert r.fills < r.misses
    assert r.hits >= 6  # a and b hit every time after their first miss
