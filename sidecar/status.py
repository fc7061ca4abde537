"""The sidecar's view of itself: one collector behind the status page, the metrics and the stats JSON.

``create_app`` makes one ``Status``: the miss path counts into it, and the
internal endpoints (``sidecar.internal``) render its snapshot.
"""

from __future__ import annotations

from s3cache.config import Config
from s3cache.layout import Layout
from sidecar.collector import Collector
from sidecar.fill import Filler


class Status:
    def __init__(self, config: Config, layout: Layout, filler: Filler, admission=None, *, background: bool = True):
        self.config = config
        self.collector = Collector(config, layout, filler, admission=admission)
        if background:
            self.collector.start()

    def count_miss(self, plan) -> None:
        """The sidecar's own miss counter: did this miss start a fill, or is it only redirected?"""
        self.collector.count_miss(plan.fill is not None)

    def snapshot(self) -> dict:
        return self.collector.snapshot()
