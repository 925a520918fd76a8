"""Topics made for production keep an acknowledged record through the loss of a broker."""

from __future__ import annotations

from waflow_common.kafka import _durability


def test_three_replicas_or_more_need_two_in_sync_for_a_write() -> None:
    assert _durability(3) == {"min.insync.replicas": "2"}
    assert _durability(5) == {"min.insync.replicas": "2"}


def test_a_development_broker_of_one_replica_asks_nothing_more() -> None:
    assert _durability(1) == {}
    assert _durability(2) == {}
