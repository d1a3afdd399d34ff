"""Train/test split by problem identity (`group`), never by task.

DebugBench implants several bugs into the same LeetCode problem; if one went to train and another to test,
the test set would measure memorisation. Each group's side is decided by a hash of (seed, group) alone, so it
is deterministic across runs and machines, and a group keeps its side when other groups are added.
"""

from __future__ import annotations

import hashlib

from agentq.tasks.schema import Task


def in_test(group: str, test_share: float, seed: int = 0) -> bool:
    digest = hashlib.sha256(f"{seed}\0{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_share


def split_by_group(tasks: list[Task], test_share: float = 0.2, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """(train, test), each in input order."""
    if not 0.0 <= test_share <= 1.0:
        raise ValueError(f"test share must be between 0 and 1, got {test_share}")
    train, test = [], []
    for task in tasks:
        (test if in_test(task.group, test_share, seed) else train).append(task)
    return train, test
