"""Random inputs shaped like a LeetCode problem's examples, for differential hidden tests.

A hidden input is only useful if it is one the problem allows: an input outside the contract makes the
reference's answer arbitrary and would punish a correct fix that handles it differently. Nothing here knows
the problems, so every property the examples share is kept (a conservative reading: a coincidence only
narrows what is generated, never makes it invalid), and the stated constraints bound values and sizes:

* per value position (argument and nesting depth): the type, the range of ints (widened a little, sign
  kept unless a constraint allows otherwise), the alphabet of strings, list lengths, and list properties
  (sorted, strictly increasing, distinct, a permutation, rectangular rows, fixed-size tuples);
* across arguments: equal lengths, an int equal to / bounded by another argument's length, all of a
  list's ints below an int argument (node labels below `n`), an int not above another;
* constraints such as `1 <= nums.length <= 10^4` or `-10^9 <= nums[i] <= 10^9`, read from the
  statement's text, where `104` is how the data set spells 10^4.

Sizes stay small (a hidden test must be fast for slow but correct candidates too). Every draw comes from
one `random.Random`, and iteration never depends on set or dict order, so a seed fixes the inputs.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from agentq.sandbox.leetcode import TreeNode, tree_values
from agentq.tasks.leetcode_helpers import _tree

Key = tuple[str, int, str]  # (argument or "Node", depth, "val" | "len")
Bounds = dict[Key, tuple[int | None, int | None]]

MAX_LEN = {0: 12, 1: 6}  # list/str length caps by depth: small, so hidden tests stay fast
MAX_STR = 14
MAX_NODES = 15
_ORDER = re.compile(r"\s*(<=|<|==|≤)\s*")
_NUMBER = re.compile(r"(-?)(?:(\d+)\*)?(\d+)(?:([+-])1)?")
_VARIABLE = re.compile(r"([A-Za-z_]\w*)((?:\[[a-z]\])*)(\.length|\.val)?")
_NODE_COUNT = re.compile(r"number of nodes in the (?:tree|list|linked list) is in the range \[(.+?),(.+?)\]", re.I)


def parse_number(term: str) -> int | None:
    """`10^4`, `104` (10^4 with its superscript lost), `2 * 105`, `-231`, `231 - 1` (2^31 - 1), `500`."""
    match = _NUMBER.fullmatch(term.replace(" ", "").replace("^", "").replace("−", "-"))
    if not match:
        return None
    sign, factor, base, adjust = match.groups()
    if re.fullmatch(r"10[1-9]", base):
        value = 10 ** int(base[2])
    elif base in ("231", "232"):
        value = 2 ** int(base[1:])
    else:
        value = int(base)
    value *= int(factor) if factor else 1
    if adjust:
        value += 1 if adjust == "+" else -1
    return -value if sign else value


def _keys(term: str) -> list[Key]:
    keys = []
    for part in term.split(","):
        match = _VARIABLE.fullmatch(part.strip())
        if not match:
            return []
        name, index, attr = match.groups()
        if attr == ".val":
            keys.append((name, 1, "val"))
        else:
            keys.append((name, index.count("["), "len" if attr else "val"))
    return keys


def parse_constraints(text: str) -> Bounds:
    """Numeric bounds stated in `<=` chains; symbolic bounds (`k <= n`) are left to the examples' relations."""
    bounds: Bounds = {}

    def tighten(key: Key, lo: int | None, hi: int | None) -> None:
        old_lo, old_hi = bounds.get(key, (None, None))
        lo = lo if old_lo is None else old_lo if lo is None else max(lo, old_lo)
        hi = hi if old_hi is None else old_hi if hi is None else min(hi, old_hi)
        bounds[key] = (lo, hi)

    for line in text.splitlines():
        line = line.strip().rstrip(".")
        node_count = _NODE_COUNT.search(line)
        if node_count:
            tighten(("Node", 0, "len"), parse_number(node_count[1]), parse_number(node_count[2]))
            continue
        parts = _ORDER.split(line)
        if len(parts) < 3:
            continue
        terms, ops = parts[0::2], parts[1::2]
        numbers = [parse_number(t) for t in terms]
        for i, term in enumerate(terms):
            keys = _keys(term) if numbers[i] is None else []
            if not keys:
                continue
            lo = hi = None
            for j in range(i - 1, -1, -1):
                if numbers[j] is not None:
                    lo = numbers[j] + any(op == "<" for op in ops[j:i])
                    break
            for j in range(i + 1, len(terms)):
                if numbers[j] is not None:
                    hi = numbers[j] - any(op == "<" for op in ops[i:j])
                    break
            for key in keys:
                tighten(key, lo, hi)
    return bounds


def _is_int(v: Any) -> bool:
    return type(v) is int


def _int_leaves(value: Any) -> list[int]:
    if _is_int(value):
        return [value]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _int_leaves(item)]
    return []


def _widen(lo: int, hi: int, bound: tuple[int | None, int | None], scalar: bool) -> tuple[int, int]:
    """The observed range widened by half its width (at least 2), clamped to the constraint; a range
    that never went below 0 (or 1) stays there unless the constraint says lower values are allowed."""
    spread = max(2, (hi - lo) // 2 + 1)
    new_lo, new_hi = lo - spread, (hi * 2 + spread) if scalar and hi > 0 else hi + spread
    c_lo, c_hi = bound
    if c_lo is not None:
        new_lo = max(new_lo, c_lo)
    elif lo >= 0:
        new_lo = max(new_lo, min(lo, 1))
    if c_hi is not None:
        new_hi = min(new_hi, c_hi)
    elif hi <= 0:
        new_hi = min(new_hi, 0)
    return new_lo, max(new_lo, new_hi)


@dataclass
class Position:
    """Everything seen at one (argument, depth) across all examples."""

    values: list[Any] = field(default_factory=list)

    def of_type(self, kind: type) -> list[Any]:
        return [v for v in self.values if type(v) is kind]

    def lists(self) -> list[list]:
        return self.of_type(list)

    def all_lists(self, check) -> bool:
        """`check` holds for every list here, and some list here is long enough for it to mean anything."""
        lists = self.lists()
        return bool(lists) and any(len(v) >= 2 for v in lists) and all(check(v) for v in lists)


def _is_perm(values: list, start: int) -> bool:
    return all(_is_int(v) for v in values) and sorted(values) == list(range(start, start + len(values)))


def _order_columns(row: list, here: Position) -> None:
    """Rows of a fixed width ([start, end, duration]) keep every column order all examples' rows share."""
    rows = here.lists()
    if len(rows) < 2 or {len(r) for r in rows} != {len(row)} or not all(_is_int(x) for r in rows + [row] for x in r):
        return
    columns = range(len(row))
    pairs = [(a, b) for a in columns for b in columns if a != b and all(r[a] <= r[b] for r in rows)]
    for _ in columns:
        for a, b in pairs:
            if row[a] > row[b]:
                row[a], row[b] = row[b], row[a]


class _Redraw(Exception):
    """A draw that cannot meet a required shape (two distinct values from a range of one)."""


def _relation_holds(kind: str, a: Any, b: Any) -> bool:
    if kind == "len_eq":
        return len(a) == len(b)
    if kind == "int_eq_len":
        return a == len(b)
    if kind == "int_lt_len":
        return a < len(b)
    if kind == "int_le_len":
        return a <= len(b)
    if kind == "int_ge_len":
        return a >= len(b)
    if kind == "leaves_lt":
        return max(_int_leaves(b), default=a - 1) < a
    if kind == "leaves_le":
        return max(_int_leaves(b), default=a) <= a
    return a <= b  # int_le


def _monotone(values: list) -> bool:
    try:
        return values == sorted(values) or values == sorted(values, reverse=True)
    except TypeError:
        return False


class InputModel:
    """What a problem's inputs look like, learnt from its parsed examples; `sample(rng)` draws a new one."""

    def __init__(self, params: list[str], kinds: list[str], examples: list[dict[str, Any]], constraints: str):
        self.params, self.kinds, self.examples = params, dict(zip(params, kinds, strict=True)), examples
        self.bounds = parse_constraints(constraints)
        self.positions: dict[tuple[str, int], Position] = {}
        for example in examples:
            for name in params:
                value = example[name]
                if self.kinds[name] == "tree":
                    self._observe(name, 0, value)
                else:
                    self._walk(name, 0, value)
        self.relations = self._relations()
        # An int that some example takes from a list argument (a target that is present) sometimes does so.
        self.members = [
            (x, lst)
            for x in params
            for lst in params
            if x != lst and any(_is_int(e[x]) and e[x] in _int_leaves(e[lst]) for e in examples)
        ]
        self.bst = {n for n in params if self.kinds[n] == "tree" and self._all_bst(n)}

    def _observe(self, name: str, depth: int, value: Any) -> None:
        self.positions.setdefault((name, depth), Position()).values.append(value)
        if self.kinds[name] == "tree" and depth == 0:
            for v in value:
                if v is not None:
                    self._observe(name, 1, v)

    def _walk(self, name: str, depth: int, value: Any) -> None:
        self._observe(name, depth, value)
        if isinstance(value, list):
            for item in value:
                self._walk(name, depth + 1, item)

    def _all_bst(self, name: str) -> bool:
        for example in self.examples:
            values = [node.val for node in _ordered(_tree(example[name]))]
            if not all(_is_int(v) for v in values) or any(a >= b for a, b in zip(values, values[1:], strict=False)):
                return False
        return True

    def bound(self, name: str, depth: int, attr: str) -> tuple[int | None, int | None]:
        if (name, depth, attr) in self.bounds:
            return self.bounds[(name, depth, attr)]
        if self.kinds[name] != "plain":
            return self.bounds.get(("Node", depth, attr), (None, None))
        return (None, None)

    # -- relations between arguments ------------------------------------------------------------------------

    def _relations(self) -> list[tuple[str, str, str]]:
        """(kind, a, b) holding in every example, in parameter order so the result is deterministic."""
        ex = self.examples
        sized = [n for n in self.params if self.kinds[n] != "tree" and all(isinstance(e[n], list | str) for e in ex)]
        ints = [n for n in self.params if all(_is_int(e[n]) for e in ex)]
        found = []
        for i, a in enumerate(sized):
            found += [("len_eq", a, b) for b in sized[i + 1 :] if all(len(e[a]) == len(e[b]) for e in ex)]
        for x in ints:
            for lst in sized:
                if all(e[x] == len(e[lst]) for e in ex):
                    found.append(("int_eq_len", x, lst))
                elif all(e[x] < len(e[lst]) for e in ex):
                    found.append(("int_lt_len", x, lst))
                elif all(e[x] <= len(e[lst]) for e in ex):
                    found.append(("int_le_len", x, lst))
                elif all(e[x] >= len(e[lst]) for e in ex):
                    found.append(("int_ge_len", x, lst))
            for lst in self.params:
                if lst == x or not any(_int_leaves(e[lst]) for e in ex):
                    continue
                if all(max(_int_leaves(e[lst]), default=-(10**18)) < e[x] for e in ex):
                    found.append(("leaves_lt", x, lst))
                elif all(max(_int_leaves(e[lst]), default=-(10**18)) <= e[x] for e in ex):
                    found.append(("leaves_le", x, lst))
            found += [("int_le", x, y) for y in ints if y != x and all(e[x] <= e[y] for e in ex)]
        return found

    def holds(self, values: dict[str, Any]) -> bool:
        return all(_relation_holds(kind, values[a], values[b]) for kind, a, b in self.relations)

    # -- drawing values -------------------------------------------------------------------------------------

    def _int(self, rng: random.Random, name: str, depth: int, cap: int | None = None) -> int:
        ints = self.positions[(name, depth)].of_type(int)
        bound = self.bound(name, depth, "val")
        lo, hi = _widen(min(ints), max(ints), bound, scalar=depth == 0)
        if depth > 0 and None not in bound and rng.random() < 0.2:
            lo, hi = max(bound[0], -(10**9)), min(bound[1], 10**9)  # sometimes anywhere the statement allows
        if cap is not None:
            hi = min(hi, cap)
            lo = min(lo, hi)
        return rng.randint(lo, hi)

    def _length(self, rng: random.Random, name: str, depth: int, lengths: list[int], limit: int) -> int:
        lo, hi = _widen(min(lengths), max(lengths), self.bound(name, depth, "len"), scalar=False)
        hi = min(hi, max(limit, min(lengths)))
        lo = min(lo, hi)
        return lo if rng.random() < 0.1 else rng.randint(lo, hi)

    def _string(self, rng: random.Random, name: str, depth: int, length: int | None) -> str:
        strings = self.positions[(name, depth)].of_type(str)
        alphabet = sorted(set("".join(strings))) or ["a"]
        if length is None:
            length = self._length(rng, name, depth, [len(s) for s in strings], MAX_STR)
        text = "".join(rng.choice(alphabet) for _ in range(length))
        if len(text) > 1 and text[0] == "0" and all(s.isdigit() and (s == "0" or s[0] != "0") for s in strings):
            text = rng.choice([c for c in alphabet if c != "0"] or ["1"]) + text[1:]
        return text

    def _value(self, rng: random.Random, name: str, depth: int, length: int | None = None, cap: int | None = None):
        here = self.positions[(name, depth)]
        kinds = sorted({type(v).__name__ for v in here.values})
        kind = rng.choice(kinds)
        if kind == "NoneType":
            return None
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "int":
            return self._int(rng, name, depth, cap)
        if kind == "float":
            floats = here.of_type(float)
            places = max(len(repr(f).split(".")[1]) for f in floats)
            lo, hi = min(floats), max(floats)
            spread = max(1.0, (hi - lo) / 2)
            return round(rng.uniform(lo - spread if lo < 0 else max(0.0, lo - spread), hi + spread), places)
        if kind == "str":
            tokens = here.of_type(str)
            if depth > 0 and length is None and rng.random() < 0.5:
                return rng.choice(tokens)  # words, commands ("C", "+", "D"): reuse them as well as invent
            return self._string(rng, name, depth, length)
        return self._list(rng, name, depth, length, cap)

    def _list(self, rng: random.Random, name: str, depth: int, length: int | None, cap: int | None) -> list:
        here = self.positions[(name, depth)]
        lists = here.lists()
        required = length
        if length is None:
            length = self._length(rng, name, depth, [len(v) for v in lists], MAX_LEN.get(depth, 4))
        children = self.positions.get((name, depth + 1))
        if children is None:
            return []
        for start in (0, 1):
            if here.all_lists(lambda v, start=start: _is_perm(v, start)):
                values = list(range(start, start + length))
                rng.shuffle(values)
                return values
        inner = [len(v) for v in children.lists()]
        # Rows of one fixed size everywhere (pairs, intervals, points) keep it.
        fixed = inner[0] if len(inner) >= 2 and len(set(inner)) == 1 else None
        rectangular = here.all_lists(lambda v: all(type(r) is list for r in v) and len({len(r) for r in v}) == 1)
        if rectangular and fixed is None and inner:
            fixed = self._length(rng, name, depth + 1, inner, MAX_LEN.get(depth + 1, 4))
        strings = children.of_type(str)
        same_strings = here.all_lists(lambda v: all(type(s) is str for s in v) and len({len(s) for s in v}) == 1)
        if same_strings and strings:
            fixed = self._length(rng, name, depth + 1, [len(s) for s in strings], MAX_STR)
        if here.all_lists(lambda v: all(_is_int(x) and 0 <= x < len(v) for x in v)):
            cap = length - 1 if cap is None else min(cap, length - 1)  # values that index the list itself
        distinct = here.all_lists(lambda v: len(set(map(repr, v))) == len(v))
        values, seen = [], set()
        for _ in range(length):
            # Distinct lists redraw a repeated value a few times, and end shorter only if the range is too small.
            for _ in range(20 if distinct else 1):
                value = self._value(rng, name, depth + 1, fixed, cap)
                if repr(value) not in seen:
                    break
            if not distinct or repr(value) not in seen:
                values.append(value)
                seen.add(repr(value))
        if required is not None and len(values) != required:
            raise _Redraw(f"no {required} distinct values for {name}")
        if here.all_lists(lambda v: all(_is_int(x) for x in v) and v == sorted(v)):
            values.sort()
        elif here.all_lists(lambda v: all(_is_int(x) for x in v) and v == sorted(v, reverse=True)):
            values.sort(reverse=True)
        else:
            _order_columns(values, here)
        return values

    def _tree(self, rng: random.Random, name: str, cap: int | None) -> list:
        shapes = self.positions[(name, 0)].lists()
        counts = [sum(v is not None for v in shape) for shape in shapes]
        n = self._length(rng, name, 0, counts, MAX_NODES)
        if n == 0 or (name, 1) not in self.positions:
            return []
        nodes = [TreeNode(0)]
        for _ in range(n - 1):
            parent = rng.choice([node for node in nodes if node.left is None or node.right is None])
            side = rng.choice([s for s in ("left", "right") if getattr(parent, s) is None])
            setattr(parent, side, TreeNode(0))
            nodes.append(getattr(parent, side))
        if name in self.bst:
            values = sorted({self._int(rng, name, 1, cap) for _ in range(3 * n)})
            while len(values) < n:
                values.append(values[-1] + 1 if values else 0)
            values = sorted(rng.sample(values, n))
            for node, value in zip(_ordered(nodes[0]), values, strict=True):
                node.val = value
        else:
            for node in nodes:
                node.val = self._value(rng, name, 1, cap=cap)
        return tree_values(nodes[0])

    def _draw(self, rng: random.Random, name: str, values: dict[str, Any]) -> Any:
        """A fresh value for `name`, honouring lengths and caps from the values already drawn."""
        length = next((len(values[a]) for k, a, b in self.relations if k == "len_eq" and b == name and a in values),
                      None)
        caps = [values[x] - (k == "leaves_lt") for k, x, b in self.relations
                if k in ("leaves_lt", "leaves_le") and b == name and x in values]
        cap = min(caps) if caps else None
        if self.kinds[name] == "tree":
            return self._tree(rng, name, cap)
        return self._value(rng, name, 0, length, cap)

    def _repair(self, rng: random.Random, values: dict[str, Any]) -> None:
        for x, lst in self.members:
            leaves = _int_leaves(values[lst])
            if leaves and rng.random() < 0.5:
                values[x] = rng.choice(leaves)
        for kind, a, b in self.relations:
            if kind == "int_eq_len":
                values[a] = len(values[b])
            elif kind in ("int_lt_len", "int_le_len"):
                values[a] = min(values[a], len(values[b]) - (kind == "int_lt_len"))
            elif kind == "int_ge_len":
                values[a] = max(values[a], len(values[b]))
            elif kind == "int_le" and values[a] > values[b]:
                values[a], values[b] = values[b], values[a]

    def sample(self, rng: random.Random) -> dict[str, Any] | None:
        """A new input (argument name -> value), or None when ten draws all broke a relation."""
        for _ in range(10):
            values: dict[str, Any] = {}
            scalars = [n for n in self.params if not isinstance(self.examples[0][n], list | str)]
            order = scalars + [n for n in self.params if n not in scalars]
            try:
                if rng.random() < 0.4:
                    values = self._perturb(rng)
                else:
                    for name in order:
                        values[name] = self._draw(rng, name, values)
            except _Redraw:
                continue
            self._repair(rng, values)
            if self.holds(values):
                return {name: values[name] for name in self.params}
        return None

    def _perturb(self, rng: random.Random) -> dict[str, Any]:
        """An example with one argument redrawn or shuffled: close to inputs known to be valid."""
        values = dict(rng.choice(self.examples))
        name = rng.choice(self.params)
        value = values[name]
        orderless = not self.positions[(name, 0)].all_lists(_monotone)
        shuffle = isinstance(value, list) and self.kinds[name] == "plain" and len(value) > 1 and orderless
        if shuffle and rng.random() < 0.5:
            values[name] = rng.sample(value, len(value))
        else:
            values[name] = self._draw(rng, name, values)
        return values


def _ordered(root: TreeNode) -> list[TreeNode]:
    """Nodes in order (left, node, right): assigning sorted values along it makes a search tree."""
    return [] if root is None else [*_ordered(root.left), root, *_ordered(root.right)]
