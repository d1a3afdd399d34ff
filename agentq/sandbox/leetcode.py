"""What LeetCode gives a solution implicitly, shared by the warm executor and the naive baseline.

LeetCode runs a submission in a module that already has `typing`, the usual stdlib modules and names
(`defaultdict`, `heappush`, `inf`, `lru_cache`, ...) and the `ListNode`/`TreeNode` classes. DebugBench's
solutions rely on that, so every candidate gets the same namespace: the warm candidate process starts from
`prelude_namespace()`, the naive baseline writes `PRELUDE` at the top of `solution.py`. One source text
serves both, so the two paths cannot drift apart.

Star imports come first and plain module imports after, so `bisect`, `heapq`, ... name the modules (the
common LeetCode usage `bisect.bisect_left`), and builtins shadowed by a star import (`pow` from `math`) are
restored, so `pow(a, b, mod)` keeps working.
"""

from __future__ import annotations

from typing import Any

PRELUDE = '''\
from typing import *
from collections import *
from heapq import *
from bisect import *
from itertools import *
from functools import *
from math import *
from operator import *
from statistics import *
import bisect, collections, functools, heapq, itertools, math, operator, random, re, statistics, string
from builtins import abs, pow


class ListNode:
    def __init__(self, val=0, next=None):
        self.val = val
        self.next = next


class TreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val = val
        self.left = left
        self.right = right
'''

def prelude_namespace() -> dict[str, Any]:
    """A fresh module namespace holding everything PRELUDE defines (its classes are new each call)."""
    namespace: dict[str, Any] = {"__name__": "solution"}
    exec(compile(PRELUDE, "<leetcode prelude>", "exec", dont_inherit=True), namespace)
    return namespace


def prelude_builtins(namespace: dict[str, Any]) -> dict[str, Any]:
    """The builtins a candidate module and a test module run with: Python's own, plus the prelude's names.

    Why builtins rather than copying the prelude into each module: a module's globals then hold only its own
    names, so the fork server's children neither copy some 300 names per run nor send them to each other (the
    candidate's announcement of what it defines was 13 KB of prelude names), and a prelude name is still found
    wherever plain Python would find it. Made once in the fork server, before it forks anything."""
    merged = dict(vars(__import__("builtins")))
    merged.update((k, v) for k, v in namespace.items() if not k.startswith("__"))
    return merged


# The trusted side's own node classes: values coming back from a candidate are rebuilt as these.
_TRUSTED = prelude_namespace()
ListNode = _TRUSTED["ListNode"]
TreeNode = _TRUSTED["TreeNode"]
ListNode.__module__ = TreeNode.__module__ = __name__


def is_list_node(value: object) -> bool:
    return hasattr(value, "val") and hasattr(value, "next") and not hasattr(value, "left")


def is_tree_node(value: object) -> bool:
    return hasattr(value, "val") and hasattr(value, "left") and hasattr(value, "right")


def linked_values(head: object, limit: int = 1_000_000) -> list[Any]:
    """Values of a linked list, head first; a cycle or an over-long list raises ValueError."""
    values, seen = [], set()
    node = head
    while node is not None:
        if id(node) in seen or len(values) >= limit:
            raise ValueError("linked list has a cycle or is too long to send")
        seen.add(id(node))
        values.append(node.val)
        node = node.next
    return values


def build_linked(values: list[Any], node_cls: type = ListNode) -> Any:
    head = None
    for value in reversed(values):
        node = node_cls(value)
        node.next = head
        head = node
    return head


def tree_values(root: object, limit: int = 1_000_000) -> list[Any]:
    """LeetCode level order with None for missing children, trailing Nones dropped."""
    values: list[Any] = []
    queue, seen = [root], set()
    i = 0
    while i < len(queue):
        node = queue[i]
        i += 1
        if node is None:
            values.append(None)
            continue
        if id(node) in seen or len(seen) >= limit:
            raise ValueError("binary tree has a cycle, a shared node or too many nodes to send")
        seen.add(id(node))
        values.append(node.val)
        queue.append(node.left)
        queue.append(node.right)
    while values and values[-1] is None:
        values.pop()
    return values


def build_tree(values: list[Any], node_cls: type = TreeNode) -> Any:
    if not values or values[0] is None:
        return None
    root = node_cls(values[0])
    root.left = root.right = None
    level, i = [root], 1
    while level and i < len(values):
        nxt = []
        for node in level:
            for side in ("left", "right"):
                child = None
                if i < len(values) and values[i] is not None:
                    child = node_cls(values[i])
                    child.left = child.right = None
                    nxt.append(child)
                setattr(node, side, child)
                i += 1
        level = nxt
    return root
