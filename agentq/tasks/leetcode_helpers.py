"""LeetCode value conversions and comparison that generated DebugBench tests embed.

Tests must be self-contained files (they run under a plain `python -m pytest` beside a `solution.py`), so
these functions are emitted into each test source with `inspect.getsource`; only the ones a test needs are
emitted. They are real code here so they are linted and unit-tested once.

Inputs are built from the `ListNode`/`TreeNode` that `from solution import *` binds: in the sandbox those
are the trusted side's own classes (the only nodes it will send to a candidate), and under plain pytest they
are the LeetCode prelude's at the top of `solution.py`. Nodes coming back are read attribute by attribute,
values canonicalised, with a size cap (100,000 nodes) so a cyclic structure fails instead of hanging.
"""

from __future__ import annotations

import inspect

from agentq.sandbox.leetcode import ListNode, TreeNode
from agentq.tasks.canon import _canon


def _linked(values):
    """LeetCode `[1,2,3]` -> 1 -> 2 -> 3 (None for an empty list)."""
    head = None
    for value in reversed(values):
        head = ListNode(value, head)
    return head


def _linked_values(node):
    values = []
    while node is not None:
        if len(values) >= 100_000:
            raise AssertionError("returned linked list is cyclic or too long")
        values.append(_canon(node.val))
        node = node.next
    return values


def _tree(values):
    """LeetCode level order with nulls (`[1,null,2,3]`) -> tree."""
    if not values or values[0] is None:
        return None
    root = TreeNode(values[0])
    queue, i = [root], 1
    for node in queue:
        if i >= len(values):
            break
        if values[i] is not None:
            node.left = TreeNode(values[i])
            queue.append(node.left)
        i += 1
        if i < len(values) and values[i] is not None:
            node.right = TreeNode(values[i])
            queue.append(node.right)
        i += 1
    return root


def _tree_values(root):
    """Tree -> LeetCode level order, trailing nulls dropped (how the judge prints trees)."""
    values, queue = [], [root]
    for node in queue:
        if len(queue) > 200_000:
            raise AssertionError("returned tree is cyclic or too large")
        if node is None:
            values.append(None)
            continue
        values.append(_canon(node.val))
        queue.append(node.left)
        queue.append(node.right)
    while values and values[-1] is None:
        values.pop()
    return values


def _same(got, expected):
    """Equality as the judge sees it: bools are not ints, floats within LeetCode's 1e-5, lists elementwise,
    and a None where a list is expected prints as `[]`, as the judge serialises it."""
    if got is None and type(expected) is list and not expected:
        return True
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(expected, float) and type(got) in (int, float):
        return abs(got - expected) <= 1e-5
    if isinstance(expected, list):
        return (
            type(got) in (list, tuple)
            and len(got) == len(expected)
            and all(_same(g, e) for g, e in zip(got, expected, strict=True))
        )
    return type(got) is type(expected) and got == expected


def _any_order(values):
    """Sort a top-level list whose order the statement leaves free; inner order still counts."""
    if type(values) not in (list, tuple):
        return values
    return sorted(values, key=repr)


def helper_source(*helpers) -> str:
    return "\n\n".join(inspect.getsource(h) for h in helpers)
