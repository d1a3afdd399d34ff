"""DebugBench (Python 3) -> Task, with tests built from each problem's LeetCode `examples`.

Upstream has no executable tests (the paper used LeetCode's judge), so each example becomes one
`test_example_<n>`: arguments parsed from the example, converted to linked lists / trees where the
reference's signature asks for them, the method called on a fresh `Solution()`, the result canonicalised
and compared as the judge would (floats within 1e-5, order-free only where the statement says the answer
may be returned "in any order"; in-place methods are checked through the argument they mutate). Design
problems (`["MyHashMap", "put", ...]`) replay their call sequence.

Loading only builds tests; whether the reference passes and the buggy code fails is decided by running
them in the sandbox (agentq.tasks.build). Instances whose tests cannot be built are returned as rejects
with a reason, never dropped silently.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from agentq.tasks.canon import module_prelude
from agentq.tasks.leetcode_helpers import (
    _any_order,
    _linked,
    _linked_values,
    _same,
    _tree,
    _tree_values,
    helper_source,
)
from agentq.tasks.leetcode_values import ExampleParseError, parse_arguments, parse_value
from agentq.tasks.schema import Task

SOURCE = "debugbench"
DATA_DIR = Path("debugbench")

# "You may return the answer in any order" frees the order of the returned list; "the pairs can appear
# in any order" (about the input) or "order the deck in any order" must not.
_ANY_ORDER = re.compile(r"\breturn\b[^.]*\bin any order", re.IGNORECASE)
_OUTPUT_END = re.compile(r"\n\s*(?:Explanation|Note)\b|\n\s*\n")

# Annotation -> how a value crosses the call: plain data, linked list, tree, or a list of either.
_NODE_KINDS = {"ListNode": "linked", "TreeNode": "tree"}
_PLAIN_TYPES = {"int", "float", "str", "bool", "List", "list", "Optional", "None", "Tuple", "tuple", "Set", "set"}


class Unsupported(ValueError):
    """An instance whose tests cannot be built; `reason` is the counted reject category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Signature:
    cls: str
    method: str
    params: list[str]
    kinds: list[str]
    returns: str
    in_place: bool


@dataclass
class Rejected:
    id: str
    group: str
    reason: str
    detail: str


@dataclass
class Loaded:
    tasks: list[Task] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def annotation_kind(annotation: ast.expr | None) -> str:
    """"plain", "linked", "tree", "linked[]" or "tree[]"; Unsupported for other classes (N-ary `Node`, ...)."""
    if annotation is None:
        return "plain"
    text = ast.unparse(annotation).strip("'\"")
    names = set(re.findall(r"[A-Za-z_]\w*", text))
    nodes = names & _NODE_KINDS.keys()
    unknown = names - _NODE_KINDS.keys() - _PLAIN_TYPES
    if unknown:
        raise Unsupported("unsupported_type", f"annotation {text!r}")
    if not nodes:
        return "plain"
    if len(nodes) > 1:
        raise Unsupported("unsupported_type", f"annotation {text!r}")
    kind = _NODE_KINDS[nodes.pop()]
    return f"{kind}[]" if re.match(r"(List|list)\[", text) else kind


def _solution_methods(tree: ast.Module) -> list[ast.FunctionDef]:
    """Public methods of the last `class Solution` that no other method calls (those are its helpers)."""
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Solution"]
    if not classes:
        return []
    methods = [n for n in classes[-1].body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    internal = {
        n.attr
        for m in methods
        for n in ast.walk(m)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self" and n.attr != m.name
    }
    return [m for m in methods if m.name not in internal] or methods


def find_signature(reference: str, arg_names: list[str], slug: str = "") -> Signature:
    """The method an example calls: matched by argument names, then by count, then by the problem's slug."""
    try:
        tree = ast.parse(reference)
    except SyntaxError as err:
        raise Unsupported("reference_syntax", str(err)) from None
    methods = _solution_methods(tree)

    def params(m: ast.FunctionDef) -> list[ast.arg]:
        return m.args.args[1:]

    def required(m: ast.FunctionDef) -> int:
        return len(params(m)) - len(m.args.defaults)

    by_name = [m for m in methods if [a.arg for a in params(m)][: len(arg_names)] == arg_names]
    by_set = [m for m in methods if set(arg_names) <= {a.arg for a in params(m)}]
    by_count = [m for m in methods if required(m) <= len(arg_names) <= len(params(m))]
    chosen = by_name or by_set or by_count
    if len(chosen) > 1 and slug:
        words = slug.split("-")
        best = max(sum(w in m.name.lower() for w in words) for m in chosen)
        chosen = [m for m in chosen if sum(w in m.name.lower() for w in words) == best]
    if len(chosen) != 1:
        found = ", ".join(m.name for m in methods) or "none"
        raise Unsupported("no_entry_point", f"{len(arg_names)} arguments {arg_names}; public methods: {found}")
    method = chosen[0]
    names = [a.arg for a in params(method)]
    order = [names.index(a) for a in arg_names] if set(arg_names) <= set(names) else list(range(len(arg_names)))
    # Arguments are passed positionally in the signature's order, so renamed parameters still line up.
    ordered = sorted(range(len(arg_names)), key=lambda i: order[i])
    kinds = [annotation_kind(params(method)[order[i]].annotation) for i in ordered]
    returns = method.returns
    in_place = isinstance(returns, ast.Constant) and returns.value is None
    return Signature(
        cls="Solution",
        method=method.name,
        params=[arg_names[i] for i in ordered],
        kinds=kinds,
        returns="plain" if in_place else annotation_kind(returns),
        in_place=in_place,
    )


@dataclass
class Example:
    text: str
    args: list[tuple[str, object]] | None = None
    output: object = None
    design: tuple[list, list] | None = None  # (operations, arguments) of a design problem


def split_example(text: str) -> Example:
    """`Input: ...\\nOutput: ...\\nExplanation: ...` (or the design layout) -> parsed Example."""
    match = re.match(r"\s*Input:?\s*(.*?)\n\s*Output:?\s*(.*)", text, re.DOTALL)
    if not match:
        raise ExampleParseError(f"no Input/Output in {text[:60]!r}")
    raw_input, rest = match.groups()
    raw_output = _OUTPUT_END.split(rest, maxsplit=1)[0].strip()
    lines = [line for line in raw_input.strip().splitlines() if line.strip()]
    if len(lines) == 2 and lines[0].lstrip().startswith("["):
        operations, arguments = parse_value(lines[0]), parse_value(lines[1])
        output = parse_value(raw_output)
        if not (isinstance(operations, list) and isinstance(arguments, list) and isinstance(output, list)):
            raise ExampleParseError("design example without operation/argument/output lists")
        if not len(operations) == len(arguments) == len(output) or not operations:
            raise ExampleParseError("design example with mismatched operation/argument/output lengths")
        return Example(text=text, output=output, design=(operations, arguments))
    return Example(text=text, args=parse_arguments(" ".join(lines)), output=parse_value(raw_output))


def _convert_in(kind: str, value: object) -> str:
    if kind == "plain":
        return repr(value)
    base = kind.rstrip("[]")
    if not isinstance(value, list):
        raise Unsupported("unsupported_type", f"{kind} argument given as {value!r}")
    builder = "_linked" if base == "linked" else "_tree"
    if kind.endswith("[]"):
        return f"[{builder}(v) for v in {value!r}]"
    return f"{builder}({value!r})"


def _convert_out(kind: str, expr: str) -> str:
    if kind == "plain":
        return f"_canon({expr})"
    reader = "_linked_values" if kind.startswith("linked") else "_tree_values"
    if kind.endswith("[]"):
        return f"[{reader}(node) for node in {expr}]"
    return f"{reader}({expr})"


def call_lines(sig: Signature, values: dict[str, object], any_order: bool) -> tuple[list[str], list[str], str]:
    """(lines binding the arguments, lines computing `got`, what `got` is): one call as the judge makes it.

    Shared by example tests, hidden tests and the probes that compute hidden tests' expected values, so
    an expected value is always read exactly the way its test will read the candidate's answer.
    """
    pairs = zip(sig.params, sig.kinds, strict=True)
    setup = [f"    {name} = {_convert_in(kind, values[name])}" for name, kind in pairs]
    call = f"Solution().{sig.method}({', '.join(sig.params)})"
    if sig.in_place:
        if not sig.params or sig.kinds[0] != "plain":
            raise Unsupported("unsupported_type", "in-place method without a list argument")
        got, what, compute = f"_canon({sig.params[0]})", f"{sig.params[0]} after the call", [f"    {call}"]
    else:
        got, what, compute = _convert_out(sig.returns, call), "returned", []
    if any_order:
        got = f"_any_order({got})"
    return setup, [*compute, f"    got = {got}"], what


def case_test(name: str, label: str, values: dict[str, object], output: object, sig: Signature, any_order: bool) -> str:
    """One `def <name>()` that calls the entry point on `values` and compares with `output` as the judge would."""
    shown = (label if len(label) <= 200 else label[:197] + "...").replace("{", "{{").replace("}", "}}")
    setup, compute, what = call_lines(sig, values, any_order)
    expected = _any_order(output) if any_order else output
    return "\n".join(
        [
            f"def {name}():",
            *setup,
            *compute,
            f"    expected = {expected!r}",
            f"    assert _same(got, expected), f{shown + ': expected {expected!r}, ' + what + ' {got!r}'!r}",
        ]
    )


def _example_test(n: int, example: Example, sig: Signature, any_order: bool) -> str:
    label = example.text.split("\n")[0].strip()
    return case_test(f"test_example_{n}", label, dict(example.args), example.output, sig, any_order)


def _design_test(n: int, example: Example, reference: str) -> str:
    operations, arguments = example.design
    cls = operations[0]
    if not isinstance(cls, str) or not re.search(rf"^class {re.escape(cls)}\b", reference, re.MULTILINE):
        raise Unsupported("no_entry_point", f"design class {cls!r} not defined by the reference")
    calls = list(zip(operations[1:], arguments[1:], example.output[1:], strict=True))
    return "\n".join(
        [
            f"def test_example_{n}():",
            f"    obj = {cls}(*{arguments[0]!r})",
            f"    for step, (name, args, expected) in enumerate({calls!r}, 1):",
            "        got = _canon(getattr(obj, name)(*args))",
            "        # Void methods print null whatever they return, as on the judge.",
            "        assert expected is None or _same(got, expected), (",
            f"            f'{cls} call {{step}}, {{name}}{{tuple(args)}}: expected {{expected!r}}, returned {{got!r}}'",
            "        )",
        ]
    )


_HELPERS_ALWAYS = (_same, _any_order)


def test_module(tests: list[str], kinds: set[str]) -> str:
    """A self-contained test file: prelude, the helpers the node kinds in play need, then the tests."""
    helpers: list = []
    if {"linked", "linked[]"} & kinds:
        helpers += [_linked, _linked_values]
    if {"tree", "tree[]"} & kinds:
        helpers += [_tree, _tree_values]
    helpers += _HELPERS_ALWAYS
    body = helper_source(*helpers) + "\n\n\n" + "\n\n\n".join(tests) + "\n"
    used = {n.id for n in ast.walk(ast.parse(body)) if isinstance(n, ast.Name)}
    return module_prelude(used) + "\n\n" + body


@dataclass
class BuiltTests:
    source: str
    entry_point: str
    notes: dict


def build_tests(reference: str, examples: list[str], description: str, slug: str = "") -> BuiltTests:
    """Test source for one problem, its entry point, and notes (skipped examples) for the metadata."""
    if not examples:
        raise Unsupported("no_examples", "the instance has no examples")
    parsed, skipped = [], []
    for i, text in enumerate(examples, 1):
        try:
            parsed.append((i, split_example(text)))
        except ExampleParseError as err:
            skipped.append({"example": i, "reason": str(err)})
    if not parsed:
        raise Unsupported("unparseable_example", skipped[0]["reason"])
    any_order = bool(_ANY_ORDER.search(description))
    tests, kinds, entries = [], set(), set()
    for i, example in parsed:
        if example.design:
            tests.append(_design_test(i, example, reference))
            entries.add(str(example.design[0][0]))
            continue
        sig = find_signature(reference, [name for name, _ in example.args], slug)
        kinds.update(sig.kinds + [sig.returns])
        entries.add(f"{sig.cls}.{sig.method}")
        tests.append(_example_test(i, example, sig, any_order))
    if len(entries) != 1:
        raise Unsupported("no_entry_point", f"examples call different methods: {sorted(entries)}")
    source = test_module(tests, kinds)
    notes = {"any_order": any_order, "skipped_examples": skipped} if skipped else {"any_order": any_order}
    return BuiltTests(source, entries.pop(), notes)


def load_debugbench(data_dir: str | Path) -> Loaded:
    """Every instance of every bug-type file, as a Task or a Rejected with its reason."""
    folder = Path(data_dir) / DATA_DIR
    files = sorted(folder.glob("python3_*.json"))
    if not files:
        raise FileNotFoundError(f"{folder}: no python3_*.json files (expected the DebugBench Python 3 part)")
    loaded = Loaded()
    # The same problem recurs under many bug types; a few carry a different reference, hence the key.
    cache: dict[tuple[str, str], BuiltTests | Unsupported] = {}
    for path in files:
        bug_type = path.stem.removeprefix("python3_")
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from None
        for index, row in enumerate(rows):
            task_id = f"{SOURCE}/{bug_type}-{index}"
            try:
                slug, reference, examples = row["slug"], row["oracle_code"], row["examples"]
                description, buggy = row["description"], row["buggy_code"]
            except KeyError as err:
                raise ValueError(f"{path}: instance {index}: missing field {err}") from None
            key = (slug, reference)
            if key not in cache:
                try:
                    cache[key] = build_tests(reference, examples, description, slug)
                except Unsupported as err:
                    cache[key] = err
            built = cache[key]
            if isinstance(built, Unsupported):
                loaded.rejected.append(Rejected(task_id, slug, built.reason, str(built)))
                continue
            loaded.tasks.append(
                Task(
                    id=task_id,
                    source=SOURCE,
                    group=slug,
                    description=description,
                    buggy_code=buggy.strip("\n") + "\n",
                    reference_code=reference.strip("\n") + "\n",
                    entry_point=built.entry_point,
                    tests=built.source,
                    metadata={
                        "slug": slug,
                        "bug_type": bug_type,
                        "level": row.get("level"),
                        "examples": examples,
                        "constraints": row.get("constraints") or "",
                        "explanation": (row.get("explanations") or "").strip(),
                        **built.notes,
                    },
                )
            )
    return loaded

