"""KeyHashPartitioner must place every key where Kafka's default partitioner does, or per-chat order breaks."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from waflow_common.producer import KeyHashPartitioner


def test_keys_land_on_the_default_partitioners_partition_cached_or_not() -> None:
    ours, default = KeyHashPartitioner(max_keys=50), DefaultPartitioner()
    keys = [f"tenant-{t}:1555{c:07d}".encode() for t in range(3) for c in range(40)] + [b"", b"\xff\x00x"]
    for partitions in ([0], [0, 1, 2], list(range(6)), list(range(7))):
        for _ in range(2):  # the second pass answers from the cache (and the cache is cleared past 50 keys)
            for key in keys:
                assert ours(key, partitions, partitions) == default(key, partitions, partitions), key


def test_a_record_without_key_goes_to_an_available_partition() -> None:
    ours = KeyHashPartitioner()
    assert {ours(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}
    assert {ours(None, [0, 1], []) for _ in range(50)} <= {0, 1}
