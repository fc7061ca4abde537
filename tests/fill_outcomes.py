"""Fill outcomes as the sidecar counts them (``s3cache_fills_total``): positive evidence that a fill ended."""

from __future__ import annotations

from collections import Counter

import requests
from prometheus_client.parser import text_string_to_metric_families


def fill_outcomes(stack) -> Counter:
    """(outcome, reason) -> count, e.g. ("filled", ""), ("failed", "disk-full")."""
    text = requests.get(stack.url + "/_s3cache/metrics", timeout=10).text
    out: Counter = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "s3cache_fills":
            for s in family.samples:
                if s.name == "s3cache_fills_total":
                    out[(s.labels["outcome"], s.labels.get("reason", ""))] += int(s.value)
    return out


def finished_fills(stack) -> int:
    """Fills that ended (filled or failed), not counting busy/cached/dropped."""
    return sum(n for (outcome, _), n in fill_outcomes(stack).items() if outcome in ("filled", "failed"))
