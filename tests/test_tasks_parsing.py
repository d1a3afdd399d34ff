"""Example parsing, LeetCode node conversions, signature detection and any-order wording (all in-process)."""

from __future__ import annotations

import pytest

from agentq.sandbox.leetcode import ListNode, TreeNode
from agentq.tasks.debugbench import Unsupported, build_tests, find_signature, split_example
from agentq.tasks.leetcode_helpers import _any_order, _linked, _linked_values, _same, _tree, _tree_values
from agentq.tasks.leetcode_values import ExampleParseError, parse_arguments, parse_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[1,2],[3,[4,[]]]]", [[1, 2], [3, [4, []]]]),
        ("[1,null,2,null]", [1, None, 2, None]),
        ("[true,false]", [True, False]),
        ('"a, b"', "a, b"),
        ('["a\\"b", "c,d", "[x]"]', ['a"b', "c,d", "[x]"]),
        ("'it,s'", "it,s"),
        ("2.00000", 2.0),
        ("-1.5e-3", -0.0015),
        ("-7", -7),
        ("  [ 1 , 2 ]  ", [1, 2]),
        ('""', ""),
    ],
)
def test_parse_value(text, expected):
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_value_keeps_bools_and_floats_apart_from_ints():
    assert [type(v) for v in parse_value("[1, 1.0, true]")] == [int, float, bool]


@pytest.mark.parametrize("text", ["00000010100", "3 (0011)", "[1,2", '"abc', "[1 2]", "True", "5, nums = [1,_]"])
def test_parse_value_refuses_what_it_would_have_to_guess(text):
    with pytest.raises(ExampleParseError):
        parse_value(text)


def test_parse_arguments_splits_only_top_level_commas():
    args = parse_arguments('words = ["a,b","c"], k = 2, grid = [[1,0],[0,1]], s = "x = 1, y"')
    assert args == [("words", ["a,b", "c"]), ("k", 2), ("grid", [[1, 0], [0, 1]]), ("s", "x = 1, y")]


def test_split_example_stops_output_at_the_explanation():
    ex = split_example("Input: n = 12, k = 3\nOutput: 3\nExplanation: Factors list is [1, 2, 3].")
    assert ex.args == [("n", 12), ("k", 3)]
    assert ex.output == 3


def test_split_example_reads_design_problems():
    ex = split_example('Input\n["NumArray", "sumRange"]\n[[[-2, 0, 3]], [0, 2]]\nOutput\n[null, 1]\n\nExplanation\n...')
    assert ex.design == (["NumArray", "sumRange"], [[[-2, 0, 3]], [0, 2]])
    assert ex.output == [None, 1]


@pytest.mark.parametrize("values", [[], [1], [1, 2, 3], [5, -1, 5, 0]])
def test_linked_list_round_trip(values):
    head = _linked(values)
    assert head is None or isinstance(head, ListNode)
    assert _linked_values(head) == values


@pytest.mark.parametrize(
    "values",
    [[], [1], [1, None, 2, 3], [5, 3, 6, 2, 4, None, 8, 1, None, None, None, 7, 9], [1, 2, None, 3, None, 4]],
)
def test_tree_round_trip_in_leetcode_level_order(values):
    root = _tree(values)
    assert root is None or isinstance(root, TreeNode)
    assert _tree_values(root) == values


def test_tree_shape_follows_level_order_with_nulls():
    root = _tree([1, None, 2, 3])
    assert root.left is None and root.right.val == 2 and root.right.left.val == 3


def test_cyclic_linked_list_fails_instead_of_hanging():
    head = _linked([1, 2])
    head.next.next = head
    with pytest.raises(AssertionError, match="cyclic"):
        _linked_values(head)


def test_same_is_strict_about_bools_and_tolerant_about_floats():
    assert _same(True, True) and not _same(1, True) and not _same(True, 1)
    assert _same(2.000001, 2.0) and _same(2, 2.0) and not _same(2.001, 2.0)
    assert _same((1, 2), [1, 2]) and not _same([1, 2], [2, 1]) and not _same("1", 1)
    assert _same(None, []) and not _same(None, [1])


def test_any_order_sorts_only_the_top_level():
    assert _any_order([[2, 1], [1, 3]]) == _any_order([[1, 3], [2, 1]])
    assert _any_order([[2, 1]]) != _any_order([[1, 2]])


SOLUTION_WITH_HELPER = """
class Solution:
    def addBinary(self, A, B):
        return A
    def addNegabinary(self, A, B):
        return B
    def isSame(self, a, b):
        return self.isSame(a, b)
    def check(self, head: Optional[ListNode], root: Optional[TreeNode]) -> bool:
        return self.isSame(head, root)
"""


def test_signature_prefers_names_then_skips_helpers_then_uses_the_slug():
    sig = find_signature(SOLUTION_WITH_HELPER, ["head", "root"])
    assert (sig.method, sig.kinds, sig.returns) == ("check", ["linked", "tree"], "plain")
    assert find_signature(SOLUTION_WITH_HELPER, ["arr1", "arr2"], "adding-two-negabinary-numbers").method == (
        "addNegabinary"
    )


def test_signature_passes_arguments_in_the_signatures_order():
    sig = find_signature("class Solution:\n    def f(self, a: int, b: List[int]) -> int: ...", ["b", "a"])
    assert sig.params == ["a", "b"]


def test_in_place_method_is_detected_from_its_none_return():
    sig = find_signature("class Solution:\n    def sortColors(self, nums: List[int]) -> None: ...", ["nums"])
    assert sig.in_place


def test_unknown_node_types_are_rejected_with_a_reason():
    with pytest.raises(Unsupported) as err:
        find_signature("class Solution:\n    def maxDepth(self, root: 'Node') -> int: ...", ["root"])
    assert err.value.reason == "unsupported_type"


@pytest.mark.parametrize(
    ("description", "any_order"),
    [
        ("Return all lonely numbers in nums. You may return the answer in any order.", True),
        ("If the tree has more than one mode, return them in any order.", True),
        ("The pairs can appear in any order.", False),
        ("You can order the deck in any order you want. Return an ordering of the deck.", False),
    ],
)
def test_any_order_only_from_wording_about_the_answer(description, any_order):
    built = build_tests(
        "class Solution:\n    def f(self, nums: List[int]) -> List[int]: ...",
        ["Input: nums = [1,2]\nOutput: [2,1]"],
        description,
    )
    assert built.notes["any_order"] is any_order
    assert ("_any_order(_canon(" in built.source) is any_order


def test_unparseable_examples_are_skipped_and_recorded_but_all_bad_is_a_reject():
    reference = "class Solution:\n    def f(self, n: int) -> int: ..."
    built = build_tests(reference, ["Input: n = 1\nOutput: 1", "Input: n = 0101\nOutput: 5"], "")
    assert "def test_example_1" in built.source and "test_example_2" not in built.source
    assert built.notes["skipped_examples"][0]["example"] == 2
    with pytest.raises(Unsupported) as err:
        build_tests(reference, ["Input: n = 0101\nOutput: 5"], "")
    assert err.value.reason == "unparseable_example"
