"""Process-level tuning every service applies once at start-up, after its modules are loaded."""

from __future__ import annotations

import gc


def tune_garbage_collector(young_objects: int = 50_000) -> None:
    """Moves everything loaded so far (modules, models, settings: alive as long as the process) out of the
    collector's generations and collects less often. Measured on ingest at 1,000 webhooks/s: p99 75 ms → 9-36 ms,
    because full collections over those long-lived objects had been landing in the request latency tail. A young
    collection's pause grows with `young_objects` (about 25 ms at 50,000 with outbound's jobs alive), so a service
    whose timing matters at that scale passes fewer."""
    gc.freeze()
    gc.set_threshold(young_objects, 20, 20)
