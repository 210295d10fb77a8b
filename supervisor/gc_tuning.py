"""The garbage collector of a serving supervisor, set for latency rather than CPython's defaults.

At 1000 streams the defaults (thresholds 700, 10, 10) ran a young collection about 25 times
a second and a full one every ~5 s. Each full one held the GIL for about 120 ms, traversing
every stream's gRPC state, history ring and lane, and every RPC waiting on the event loop
paid for it; each found a few dozen objects. Reference counting frees almost everything
here; the cyclic collector only has to find the rare cycle.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("supervisor.gc")

THRESHOLDS = (50_000, 20, 100)
"""Young collections about 70x rarer than the defaults (each looks at more objects, most
of them already dead), and the collector's own full collections hours apart under load."""

FULL_COLLECTION_INTERVAL = 600.0
"""Seconds between the full collections ``collect_periodically`` runs, so that cyclic
garbage which outlived the young generations waits minutes, not hours, to be freed."""


def tune_collector() -> None:
    """Set this process's collector for serving (see the module's docstring).

    Everything alive once the server has started (modules, classes, compiled protos, the
    policy engine) is frozen first: no collection looks at it again until ``unfreeze``.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def unfreeze() -> None:
    """Give what ``tune_collector`` froze back to the collector (after a policy reload: the
    replaced engine was frozen, and a frozen cycle is never freed)."""
    gc.unfreeze()


async def collect_periodically(interval: float = FULL_COLLECTION_INTERVAL) -> None:
    """A full collection every ``interval`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        start = time.perf_counter()
        found = gc.collect()
        log.debug("full collection: %d objects freed in %.1f ms", found, (time.perf_counter() - start) * 1e3)
