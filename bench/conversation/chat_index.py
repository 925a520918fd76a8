"""Benchmark conversation's in-memory chat list (ChatIndex) at one large tenant's size: memory per chat, a first
page, a search that matches nothing (it walks every chat), and moving a chat to the top.

    uv run python -m bench.conversation.chat_index [--chats 100000]

In-process, no servers. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

from waflow_conversation.chat_index import ChatFilter, ChatIndex, matcher

from bench.documents import chat_document
from bench.figures import figure

NOW = datetime.now(UTC)


def timed(runs: int, f: Any) -> float:
    began = time.perf_counter()
    for _ in range(runs):
        f()
    return (time.perf_counter() - began) / runs * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=100_000)
    args = parser.parse_args()

    tracemalloc.start()
    index = ChatIndex()
    for n in range(args.chats):
        index.put(chat_document(n, NOW, contact=True))
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_chat = held / args.chats / 1000
    print(f"chat index: {args.chats} chats of one tenant, {held / 1e6:.0f} MB = {per_chat:.1f} KB a chat")
    figure(f"memory per chat, {args.chats} chats", per_chat, unit="KB")

    def page(filters: ChatFilter) -> None:
        index.page("tenant_bench", matcher(filters), None, 50)

    print(f"  first page of 50: {timed(200, lambda: page(ChatFilter())):.2f} ms")
    print(f"  first page of 50 unread: {timed(200, lambda: page(ChatFilter(unread=True))):.2f} ms")
    searched = timed(5, lambda: page(ChatFilter(search="nobody")))
    print(f"  a search that matches no chat: {searched:.0f} ms")
    figure(f"a search matching no chat, {args.chats} chats", searched, unit="ms")
    print(f"  a tag no chat has: {timed(5, lambda: page(ChatFilter(tag='absent'))):.0f} ms")
    moves = iter(range(10**9))

    def move() -> None:
        n = next(moves) % args.chats
        index.update(f"tenant_bench:ch_{n:024x}", {"last_activity_at": NOW + timedelta(days=1, microseconds=n)})

    print(f"  a chat moved to the top: {timed(2_000, move) * 1000:.0f} µs")


if __name__ == "__main__":
    main()
