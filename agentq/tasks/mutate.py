"""Procedural bug injection: mutation sites found with `ast` inside function bodies, applied as minimal splices.

Each operator edits the source text of one statement's line(s) at the node's own columns, so the bug is a
small diff in the project's own formatting (an `ast.unparse` round trip would reformat the whole line and
give the bug away). Traps that give a bug away or make nonsense are avoided by construction: a removed guard
deletes the `if` statement outright (never `if False:`); a negated test never wraps a condition in
`not (...)` (it drops a `not`, adds one to a plain name or call, or turns a comparison into its opposite); a
wrong variable is a name bound earlier in the same function whose type, as far as the function shows it, is
the original's (a literal's type, an annotation, a builtin's result, a string context; the attributes read
from it and whether it is called), so `"%" + flag` for a boolean `flag` is never made.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass

OPERATORS = ("op_swap", "cmp_swap", "bool_swap", "removed_condition", "negated_test", "removed_guard",
             "off_by_one", "wrong_variable")

_BINOPS = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
           ast.FloorDiv: ("//", "/"), ast.Mod: ("%", "//"), ast.BitAnd: ("&", "|"), ast.BitOr: ("|", "&"),
           ast.LShift: ("<<", ">>"), ast.RShift: (">>", "<<")}
_CMPOPS = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
           ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.In: ("in", "not in"), ast.NotIn: ("not in", "in"),
           ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is")}
_GUARD_BODY = (ast.Return, ast.Raise, ast.Continue, ast.Break)
# A comparison's opposite (what `not (a < b)` means), for negated tests; ==, in and is are cmp_swap's already.
_OPPOSITE = {ast.Lt: ("<", ">="), ast.LtE: ("<=", ">"), ast.Gt: (">", "<="), ast.GtE: (">=", "<")}
_BUILTIN_KIND = {**dict.fromkeys(("len", "int", "ord", "hash", "round", "sum"), "int"),
                 **dict.fromkeys(("str", "repr", "chr", "format", "ascii"), "str"), "float": "float",
                 **dict.fromkeys(("list", "sorted"), "list"), "dict": "dict",
                 **dict.fromkeys(("set", "frozenset"), "set"), "tuple": "tuple", "bytes": "bytes",
                 **dict.fromkeys(("bool", "isinstance", "issubclass", "callable", "hasattr", "all", "any"), "bool")}
_TYPE_NAMES = {"int", "str", "float", "list", "dict", "set", "tuple", "bytes", "bool", "frozenset"}


@dataclass(frozen=True)
class Mutation:
    """One bug: the lines [start, end] (1-based, inclusive) of `file` replaced by `new_lines`."""

    operator: str
    function: str
    start: int
    end: int
    old_lines: tuple[str, ...]
    new_lines: tuple[str, ...]

    def apply(self, source: str) -> str:
        lines = source.splitlines(keepends=True)
        return "".join([*lines[: self.start - 1], *self.new_lines, *lines[self.end :]])


class _Source:
    """Byte-offset splicing on a module's lines (ast columns are UTF-8 byte offsets)."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines(keepends=True)

    def segment(self, node: ast.AST) -> str | None:
        if node.lineno != node.end_lineno:
            return None
        raw = self.lines[node.lineno - 1].encode()
        return raw[node.col_offset : node.end_col_offset].decode()

    def splice(self, lineno: int, start: int, end: int, text: str) -> tuple[str, str] | None:
        line = self.lines[lineno - 1]
        raw = line.encode()
        new = (raw[:start] + text.encode() + raw[end:]).decode()
        return (line, new) if new != line else None

    def gap_replace(self, left: ast.AST, right: ast.AST, old: str, new: str) -> tuple[str, str] | None:
        """Replace the operator `old` between two operands on one line with `new`."""
        if left.end_lineno != right.lineno:
            return None
        raw = self.lines[right.lineno - 1].encode()
        gap = raw[left.end_col_offset : right.col_offset].decode()
        pattern = r"\bnot\s+in\b" if old == "not in" else r"\bis\s+not\b" if old == "is not" else (
            rf"\b{old}\b" if old.isalpha() else re.escape(old))
        found = [m for m in re.finditer(pattern, gap)
                 if not (old in ("in", "is") and re.search(r"(not\s+in|is\s+not)", gap))]
        if len(found) != 1:
            return None
        m = found[0]
        new_gap = gap[: m.start()] + new + gap[m.end() :]
        return self.splice(right.lineno, left.end_col_offset, right.col_offset, new_gap)


def _bound_before(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[tuple[int, str]]:
    """(line, name) of every name the function binds: its parameters (line of the def) and assignments."""
    args = func.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs, *(a for a in (args.vararg, args.kwarg) if a)]
    bound = [(func.lineno, a.arg) for a in params]
    for node in ast.walk(func):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.append((node.lineno, node.id))
    return bound


def _value_kind(node: ast.AST | None) -> str | None:
    """The type an expression evidently has (a literal, a builtin's result, a string operation), else None."""
    if isinstance(node, ast.Constant):
        return None if node.value is None or node.value is Ellipsis else type(node.value).__name__
    if isinstance(node, ast.JoinedStr):
        return "str"
    kinds = {ast.List: "list", ast.ListComp: "list", ast.Dict: "dict", ast.DictComp: "dict", ast.Set: "set",
             ast.SetComp: "set", ast.Tuple: "tuple", ast.Compare: "bool"}
    if type(node) in kinds:
        return kinds[type(node)]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return "bool"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _BUILTIN_KIND.get(node.func.id)
    if isinstance(node, ast.BinOp) and "str" in (_value_kind(node.left), _value_kind(node.right)):
        return "str"
    return None


def _annotation_kind(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name) and node.id in _TYPE_NAMES:
        return "set" if node.id == "frozenset" else node.id
    return None


class _Types:
    """What one function shows about each name it binds: its type where evident (one kind over all its
    bindings, else unknown) and how it is used (attributes read from it, whether it is called)."""

    MIXED = "?"

    def __init__(self, func: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.kind: dict[str, str | None] = {}
        args = func.args
        positional = [*args.posonlyargs, *args.args]
        defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        for arg, default in [*zip(positional, defaults, strict=True),
                             *zip(args.kwonlyargs, args.kw_defaults, strict=True)]:
            self._bind(arg.arg, _annotation_kind(arg.annotation) or _value_kind(default))
        for arg, kind in ((args.vararg, "tuple"), (args.kwarg, "dict")):
            if arg is not None:
                self._bind(arg.arg, kind)
        self.attrs: dict[str, set[str]] = {}
        self.called: set[str] = set()
        for node in ast.walk(func):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self._bind(node.targets[0].id, _value_kind(node.value))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self._bind(node.target.id, _annotation_kind(node.annotation) or _value_kind(node.value))
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                self.attrs.setdefault(node.value.id, set()).add(node.attr)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                self.called.add(node.func.id)
        for node in ast.walk(func):  # loop targets, with-as, walrus...: bound, type not evident
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id not in self.kind:
                self.kind[node.id] = None

    def _bind(self, name: str, kind: str | None) -> None:
        old = self.kind.get(name, kind)
        self.kind[name] = kind if old == kind else self.MIXED

    def known(self, name: str) -> str | None:
        kind = self.kind.get(name)
        return None if kind == self.MIXED else kind

    def fits(self, new: str, old: str, use: ast.AST | None, string_context: bool) -> bool:
        """Whether `new` can stand where `old` is used (`use`: the node around the use) without type nonsense:
        the same evident type (or neither evident), a string beside a string, the attribute read here read
        from `new` elsewhere, a called name replaced by one called elsewhere."""
        a, b = self.known(old) or ("str" if string_context else None), self.known(new)
        if (a or b) and a != b:
            return False
        if self.kind.get(old) == self.MIXED or self.kind.get(new) == self.MIXED:
            return False
        if string_context and b != "str":
            return False
        if isinstance(use, ast.Attribute) and use.attr not in self.attrs.get(new, set()):
            return False
        return not (isinstance(use, ast.Call) and new not in self.called)


def _parents(func: ast.AST) -> dict[int, ast.AST]:
    return {id(child): node for node in ast.walk(func) for child in ast.iter_child_nodes(node)}


def _string_context(node: ast.AST, parent: ast.AST | None) -> bool:
    """A name used as an operand next to a string (`"%" + x`, `x + ".py"`): it must be a string itself."""
    return (isinstance(parent, ast.BinOp) and isinstance(parent.op, (ast.Add, ast.Mod))
            and any(_value_kind(side) == "str" for side in (parent.left, parent.right) if side is not node))


def calls(source: str) -> dict[str, set[str]]:
    """Function name -> the names it calls (plain `f(...)` and `obj.f(...)`): the module's call chains, by name."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    out: dict[str, set[str]] = {}
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = out.setdefault(func.name, set())
            for node in _walk_own(func):
                if isinstance(node, ast.Call):
                    target = node.func
                    name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
                    if name and name != func.name:
                        names.add(name)
    return out


def _walk_own(func: ast.AST) -> Iterator[ast.AST]:
    """Nodes of a function body, not descending into nested functions or classes (they are visited alone)."""
    stack = list(ast.iter_child_nodes(func))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def _is_docstring(node: ast.AST, parent_body: list[ast.stmt]) -> bool:
    return bool(parent_body) and node is parent_body[0] and isinstance(node, ast.Expr) and isinstance(
        node.value, ast.Constant) and isinstance(node.value.value, str)


def mutations(source: str) -> list[Mutation]:
    """Every one-line (or one-statement, for removed guards) mutation inside the module's function bodies."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    src = _Source(source)
    found: list[Mutation] = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += _function_mutations(func, src)
    seen, unique = set(), []
    for m in found:
        key = (m.start, m.end, m.new_lines)
        if key not in seen:
            seen.add(key)
            unique.append(m)
    return sorted(unique, key=lambda m: (m.start, OPERATORS.index(m.operator), m.new_lines))


def _function_mutations(func: ast.FunctionDef | ast.AsyncFunctionDef, src: _Source) -> list[Mutation]:
    out: list[Mutation] = []

    def add(op: str, node: ast.AST, edit: tuple[str, str] | None) -> None:
        if edit is not None:
            out.append(Mutation(op, func.name, node.lineno, node.lineno, (edit[0],), (edit[1],)))

    bound = _bound_before(func)
    types = _Types(func)
    parents = _parents(func)
    out += _removed_guards(func.name, func.body, src) if len(func.body) > 1 else []
    for node in _walk_own(func):
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            old, new = _BINOPS[type(node.op)]
            if not (isinstance(node.op, ast.Mod) and isinstance(node.left, (ast.Constant, ast.JoinedStr))):
                add("op_swap", node, src.gap_replace(node.left, node.right, old, new))
        elif (isinstance(node, ast.AugAssign) and type(node.op) in _BINOPS
              and node.target.end_lineno == node.value.lineno):
            old, new = _BINOPS[type(node.op)]
            add("op_swap", node, src.gap_replace(node.target, node.value, old + "=", new + "="))
        elif isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators, strict=True):
                if type(op) in _CMPOPS:
                    old, new = _CMPOPS[type(op)]
                    add("cmp_swap", node, src.gap_replace(left, right, old, new))
                left = right
        elif isinstance(node, ast.BoolOp):
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            for left, right in zip(node.values, node.values[1:], strict=False):
                add("bool_swap", node, src.gap_replace(left, right, old, new))
            if node.lineno == node.end_lineno:
                for i in range(len(node.values)):
                    kept = [src.segment(v) for j, v in enumerate(node.values) if j != i]
                    if all(k is not None for k in kept):
                        text = f" {old} ".join(kept)  # type: ignore[arg-type]
                        add("removed_condition", node, src.splice(node.lineno, node.col_offset,
                                                                  node.end_col_offset, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            add("bool_swap", node, src.splice(node.lineno, node.col_offset, node.end_col_offset,
                                              str(not node.value)))
        elif isinstance(node, ast.Constant) and type(node.value) is int and src.segment(node) == str(node.value):
            for delta in (1, -1):
                if node.value + delta >= 0:
                    add("off_by_one", node, src.splice(node.lineno, node.col_offset, node.end_col_offset,
                                                       str(node.value + delta)))
        elif (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in ("self", "cls")
              and any(n == node.id for _, n in bound)):
            parent = parents.get(id(node))
            use = parent if isinstance(parent, ast.Attribute) or (
                isinstance(parent, ast.Call) and parent.func is node) else None
            strings = _string_context(node, parent)
            # deterministic pick: the nearest earlier binding of another name that fits the use
            target = parent.target.id if isinstance(parent, ast.AugAssign) and isinstance(parent.target,
                                                                                           ast.Name) else None
            fitting = [(line, n) for line, n in bound if line < node.lineno
                       and n not in (node.id, target, "self", "cls") and types.fits(n, node.id, use, strings)]
            if fitting:
                add("wrong_variable", node, src.splice(node.lineno, node.col_offset, node.end_col_offset,
                                                       max(fitting)[1]))
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            add("negated_test", node.test, _negated(node.test, src))
        for body in (getattr(node, "body", None), getattr(node, "orelse", None)):
            if isinstance(body, list) and len(body) > 1:
                out += _removed_guards(func.name, body, src)
    return out


def _negated(test: ast.expr, src: _Source) -> tuple[str, str] | None:
    """A condition turned into its opposite the way a slip would write it: `not x` loses its `not`, a plain
    name, attribute, call or subscript gains one, a single ordering comparison flips (`<` -> `>=`). Anything
    else is left alone: wrapping it in `not (...)` would point at the bug."""
    seg = src.segment(test)
    if seg is None:
        return None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = src.segment(test.operand)
        if inner is None:
            return None
        text = inner[1:-1] if inner.startswith("(") and inner.endswith(")") else inner
        return src.splice(test.lineno, test.col_offset, test.end_col_offset, text)
    if isinstance(test, (ast.Name, ast.Call, ast.Attribute, ast.Subscript)):
        return src.splice(test.lineno, test.col_offset, test.end_col_offset, f"not {seg}")
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPPOSITE:
        old, new = _OPPOSITE[type(test.ops[0])]
        return src.gap_replace(test.left, test.comparators[0], old, new)
    return None


def _removed_guards(function: str, body: list[ast.stmt], src: _Source) -> list[Mutation]:
    """`if cond: return/raise/continue/break` statements deleted whole, where the block keeps other statements."""
    out = []
    for stmt in body:
        if (isinstance(stmt, ast.If) and not stmt.orelse and len(stmt.body) == 1
                and isinstance(stmt.body[0], _GUARD_BODY) and stmt.end_lineno - stmt.lineno <= 3):
            first = src.lines[stmt.lineno - 1]
            if first.lstrip().startswith("if ") and first[: len(first) - len(first.lstrip())].strip() == "":
                old = tuple(src.lines[stmt.lineno - 1 : stmt.end_lineno])
                out.append(Mutation("removed_guard", function, stmt.lineno, stmt.end_lineno, old, ()))
    return out
