"""The plain-data proxy between tests and candidate: LeetCode shapes work, and nothing but data crosses.

The codec and verdict rules are pure functions, tested directly; the end-to-end cases go through a real
LocalExecutor, and the same candidates through the naive baseline must agree with it.
"""

from __future__ import annotations

import collections
import math
import textwrap

import pytest

from agentq.sandbox import Limits, LocalExecutor
from agentq.sandbox.leetcode import ListNode, build_tree, tree_values
from agentq.sandbox.naive import run_naive
from agentq.sandbox.outcome import verdict_from_run
from agentq.sandbox.wire import Codec, ProtocolError

LIMITS = Limits(timeout_s=3)


def _codec() -> Codec:
    def to_ref(value):
        raise TypeError(f"no refs here: {type(value).__name__}")

    def from_ref(ref):
        return ("ref", ref["id"])

    return Codec(to_ref, from_ref)


@pytest.mark.parametrize(
    "value",
    [
        None, True, 0, -(10**40), 2**70, 1.5, -0.0, "héllo\ud800", [1, [2, [3]]], (1, (2,)), {1: "a", (2, 3): [4]},
        {"k": {"nested": {1, 2}}}, frozenset({1, 2}), collections.deque([1, (2,)]), b"\x00\xff", bytearray(b"ab"),
        3 + 4j, range(1, 10, 3), [],
    ],
)
def test_codec_round_trips_plain_data_exactly(value):
    codec = _codec()
    decoded = codec.decode(codec.encode(value))
    assert decoded == value and type(decoded) is type(value)


def test_codec_float_specials_and_subclasses_become_plain():
    codec = _codec()
    assert math.isnan(codec.decode(codec.encode(float("nan"))))
    assert codec.decode(codec.encode(float("-inf"))) == float("-inf")

    class Liar(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    back = codec.decode(codec.encode(Liar(7)))
    assert type(back) is int and back == 7 and back != 8


def test_codec_nodes_use_leetcode_level_order():
    codec = _codec()
    root = build_tree([1, None, 2, 3])
    assert codec.encode(root) == {"t": "tree_node", "v": [1, None, 2, 3]}
    assert tree_values(codec.decode(codec.encode(root))) == [1, None, 2, 3]
    head = ListNode(1, ListNode(2))
    assert codec.encode(head) == {"t": "list_node", "v": [1, 2]}
    cyclic = ListNode(1)
    cyclic.next = cyclic
    with pytest.raises(ValueError, match="cycle"):
        codec.encode(cyclic)


@pytest.mark.parametrize(
    "bad",
    [
        {"t": "nope", "v": []},
        {"t": "float", "v": "1e309x"},
        {"t": "tuple", "v": 3},
        {"x": 1},
        {"t": "dict", "v": [[[1], 2]]},
    ],
)
def test_codec_rejects_malformed_input(bad):
    with pytest.raises(ProtocolError):
        _codec().decode(bad)


def test_codec_refuses_to_send_objects_with_behaviour():
    with pytest.raises(TypeError):
        _codec().encode(object())


RAW = {"stdout": "", "stderr": "", "duration_s": 0.01, "isolation": [], "tests_exit": {"code": 0}}


def _ev(*names_passed, end=True):
    events = [{"e": "got_tests"}] + [{"e": "test", "name": n, "passed": p, "message": "m"} for n, p in names_passed]
    return events + ([{"e": "end"}] if end else [])


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ({**RAW, "events": _ev(("test_a", True), ("test_b", True))}, "passed"),
        ({**RAW, "events": _ev(("test_a", True))}, "error"),  # a missing result is never a pass
        ({**RAW, "events": _ev(("test_a", True), ("test_b", True), end=False)}, "error"),
        ({**RAW, "tests_exit": {"code": 70}, "events": _ev(("test_a", True), ("test_b", True))}, "error"),
        ({**RAW, "tests_exit": {"signal": 9, "name": "SIGKILL"}, "events": _ev(("test_a", True))}, "killed"),
        ({**RAW, "events": _ev(("test_a", True), ("test_b", False))}, "failed"),
        ({**RAW, "timed_out": True, "events": _ev(("test_a", True), end=False)}, "timeout"),
        ({**RAW, "events": [{"e": "import_error", "type": "MemoryError", "message": ""}]}, "memory"),
        ({**RAW, "events": [{"e": "import_error", "type": None}], "candidate_exit": {"signal": 24, "name": "SIGXCPU"}},
         "timeout"),
        ({**RAW, "events": _ev(("test_a", True), ("test_a", True), end=True)}, "error"),  # duplicates count once
    ],
)
def test_verdict_rules(raw, status):
    verdict = verdict_from_run(raw, ["test_a", "test_b"], LIMITS)
    assert verdict.status == status, verdict


LEETCODE_TESTS = textwrap.dedent(
    """
    from solution import *

    def _lst(node):
        out = []
        while node:
            out.append(node.val)
            node = node.next
        return out

    def _tree(values):
        nodes = [None if v is None else TreeNode(v) for v in values]
        kids = nodes[::-1]
        root = kids.pop()
        for node in nodes:
            if node:
                if kids: node.left = kids.pop()
                if kids: node.right = kids.pop()
        return root

    def test_linked_list_in_and_out():
        head = ListNode(1, ListNode(2, ListNode(3)))
        assert _lst(Solution().reverseList(head)) == [3, 2, 1]

    def test_tree_in():
        assert Solution().maxDepth(_tree([3, 9, 20, None, None, 15, 7])) == 3

    def test_tree_out():
        root = Solution().invertTree(_tree([4, 2, 7]))
        assert (root.val, root.left.val, root.right.val) == (4, 7, 2)

    def test_in_place_edit_comes_back():
        nums = [2, 0, 1]
        assert Solution().sortColors(nums) is None
        assert nums == [0, 1, 2]

    def test_prelude_names_and_tuples():
        assert Solution().count([3, 1, 3]) == {3: 2, 1: 1}
        assert Solution().pair() == (1, "a")

    def test_candidate_exception_keeps_its_type():
        try:
            Solution().boom()
        except ValueError as err:
            assert "bad input" in str(err)
        else:
            raise AssertionError("no exception")

    def test_design_class_keeps_state():
        cache = Counter2()
        cache.add(5)
        cache.add(7)
        assert cache.total() == 12
    """
)

LEETCODE_SOLUTION = textwrap.dedent(
    """
    class Solution:
        def reverseList(self, head: Optional[ListNode]) -> Optional[ListNode]:
            prev = None
            while head:
                head.next, prev, head = prev, head, head.next
            return prev

        def maxDepth(self, root: Optional[TreeNode]) -> int:
            return 0 if not root else 1 + max(self.maxDepth(root.left), self.maxDepth(root.right))

        def invertTree(self, root):
            if root:
                root.left, root.right = self.invertTree(root.right), self.invertTree(root.left)
            return root

        def sortColors(self, nums: List[int]) -> None:
            nums.sort()

        def count(self, nums):
            return dict(Counter(nums))

        def pair(self):
            return (1, "a")

        def boom(self):
            raise ValueError("bad input")

    class Counter2:
        def __init__(self):
            self.items = deque()

        def add(self, x):
            self.items.append(x)

        def total(self):
            return sum(self.items)
    """
)


@pytest.fixture(scope="module")
def ex():
    with LocalExecutor(workers=2, limits=LIMITS) as executor:
        yield executor


def test_leetcode_shapes_pass_warm_and_naive(ex):
    warm = ex.run(LEETCODE_SOLUTION, LEETCODE_TESTS)
    assert warm.status == "passed", warm
    assert warm.expected_tests == 7
    naive = run_naive(LEETCODE_SOLUTION, LEETCODE_TESTS, LIMITS)
    assert naive.status == "passed", naive.message


def test_wrong_leetcode_solution_fails_the_right_tests(ex):
    wrong = LEETCODE_SOLUTION.replace("nums.sort()", "nums = sorted(nums)").replace("1 + max", "2 + max")
    verdict = ex.run(wrong, LEETCODE_TESTS)
    assert verdict.status == "failed"
    assert [t.name for t in verdict.tests if not t.passed] == ["test_tree_in", "test_in_place_edit_comes_back"]
    assert verdict.message.startswith("test_tree_in: AssertionError")


def test_candidate_defined_node_classes_still_cross_as_data(ex):
    own_nodes = "class ListNode:\n    def __init__(self, x):\n        self.val = x\n        self.next = None\n"
    verdict = ex.run(own_nodes + LEETCODE_SOLUTION, LEETCODE_TESTS)
    assert verdict.status == "passed", verdict


def test_values_with_lying_eq_arrive_as_opaque_handles(ex):
    tests = "from solution import *\ndef test_eq():\n    assert get() == 3\n"
    tests += "def test_handle():\n    assert 'candidate' in repr(get())\n"
    code = "class Yes:\n    def __eq__(self, other):\n        return True\ndef get():\n    return Yes()\n"
    verdict = ex.run(code, tests)
    assert [t.passed for t in verdict.tests] == [False, True]


def test_tests_that_swallow_candidate_death_still_fail(ex):
    tests = textwrap.dedent(
        """
        from solution import *
        def test_swallow():
            try:
                f()
            except BaseException:
                pass
        def test_after():
            assert True
        """
    )
    verdict = ex.run("import os\ndef f():\n    os._exit(0)\n", tests)
    assert verdict.status == "failed"
    assert [t.passed for t in verdict.tests] == [False, False]
    assert "not run" in verdict.tests[1].message
