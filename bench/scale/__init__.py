"""bench.scale: conversation with 1 and 2 instances, its capacity as a ratio, its memory at 10k and 100k chats."""
