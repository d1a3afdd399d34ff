"""HumanEvalFix (HumanEvalPack, Python) -> Task, keeping the upstream `check()`'s asserts as the tests.

Upstream `check(candidate)` compares the candidate's raw return values, so a returned object with a lying
`__eq__` would pass. An AST pass wraps every call into solution code in `_canon(...)`, which makes every
comparison, truthiness test and arithmetic in the asserts operate on plain data whatever the operator.

Each assert of `check` (a top-level statement that asserts something, a loop of asserts included) becomes a
test of its own (`test_check_<i>`), with the statements before it that assert nothing (imports, set-up) in
front, so a candidate's reward is the share of cases it gets right: graded, as DebugBench's per-example tests
are. As one all-or-nothing test, 8 training tasks x 8 samples of SmolLM2-135M gave 0 pairs; a candidate
right on 5 of 7 cases and one right on 1 now differ. Asserts of a constant (`assert True`) are no case.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from agentq.tasks.canon import is_builtin, module_prelude
from agentq.tasks.schema import Task

SOURCE = "humanevalfix"
DATA_FILE = Path("humanevalfix") / "python_humanevalpack.jsonl"


class _WrapCandidateCalls(ast.NodeTransformer):
    """Wrap calls to names the test does not define itself (the candidate and its module's helpers)."""

    def __init__(self, untrusted: set[str]):
        self.untrusted = untrusted

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in self.untrusted:
            return ast.Call(func=ast.Name("_canon", ast.Load()), args=[node], keywords=[])
        return node


def _bound_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def reference_helpers(reference: str, wanted: set[str]) -> tuple[str, set[str]]:
    """Source of the reference's top-level definitions among `wanted` (and those they use), with its imports.

    Some upstream checks call helpers of the solution's module (`poly` for `find_zero`); taken from the
    candidate, a candidate could redefine the helper to agree with any answer. Taken from here, it cannot.
    """
    tree = ast.parse(reference)
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    chosen: set[str] = set()
    todo = [name for name in wanted if name in defs]
    while todo:
        name = todo.pop()
        if name not in chosen:
            chosen.add(name)
            todo += [n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id in defs]
    if not chosen:
        return "", set()
    kept = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom) or getattr(n, "name", None) in chosen]
    return "\n\n\n".join(ast.unparse(n) for n in kept) + "\n", chosen


def rewrite_check(test_source: str, entry_point: str, task_id: str, reference: str = "") -> str:
    """Upstream test module -> self-contained test file, one `test_check_<i>` per case, canonicalised values.

    Helpers the check calls are copied from `reference` (after `from solution import *`, so they win)."""
    try:
        tree = ast.parse(test_source)
    except SyntaxError as err:
        raise ValueError(f"{task_id}: upstream test does not parse: {err}") from None
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or len(checks[0].args.args) != 1:
        raise ValueError(f"{task_id}: expected one `def check(candidate)` in the upstream test")
    param = checks[0].args.args[0].arg
    # The module-level `check(...)` call would run at import time, outside any test function.
    tree.body = [n for n in tree.body if not isinstance(n, ast.Expr)]
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    defined = _bound_names(tree) - {param}
    untrusted = {name for name in used if name not in defined and not is_builtin(name)} | {param}
    helpers, trusted = reference_helpers(reference, untrusted - {param, entry_point}) if reference else ("", set())
    untrusted -= trusted
    tree = ast.fix_missing_locations(_WrapCandidateCalls(untrusted).visit(tree))
    cases = split_cases(tree, checks[0])
    body = ast.unparse(tree)
    if helpers:
        body = f"# helpers from the reference solution, never the candidate's\n{helpers}\n\n{body}"
    tests = "".join(f"\n\ndef test_check_{i}():\n    {name}({entry_point})\n" for i, name in enumerate(cases, 1))
    return f"{module_prelude(used)}\n\n{body}\n{tests}"


def _asserts(statement: ast.stmt) -> bool:
    """Whether a statement checks anything: it holds an assert of something other than a constant."""
    return any(isinstance(n, ast.Assert) and not isinstance(n.test, ast.Constant) for n in ast.walk(statement))


def split_cases(tree: ast.Module, check: ast.FunctionDef) -> list[str]:
    """Replace `check` in `tree` by one function per case (set-up statements before it, then the case); returns
    their names in order. A check with no case of its own (no assert) stays one case, the whole body."""
    setup: list[ast.stmt] = []
    cases: list[ast.FunctionDef] = []
    for statement in check.body:
        if not _asserts(statement):
            setup.append(statement)
            continue
        name = f"_check_case_{len(cases) + 1}"
        cases.append(ast.FunctionDef(name=name, args=check.args, body=[*setup, statement], decorator_list=[],
                                     returns=None, type_params=[]))
    if not cases:
        cases = [ast.FunctionDef(name="_check_case_1", args=check.args, body=check.body, decorator_list=[],
                                 returns=None, type_params=[])]
    at = tree.body.index(check)
    tree.body[at:at + 1] = cases
    ast.fix_missing_locations(tree)
    return [c.name for c in cases]


def task_id_for(upstream_id: str) -> str:
    """"Python/0" -> "humanevalfix/HumanEval-0": stable, filename- and URL-safe."""
    return f"{SOURCE}/HumanEval-{upstream_id.rsplit('/', 1)[-1]}"


def load_humanevalfix(data_dir: str | Path) -> list[Task]:
    path = Path(data_dir) / DATA_FILE
    tasks = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                upstream, entry = row["task_id"], row["entry_point"]
                reference = row["declaration"] + row["canonical_solution"]
                tests = rewrite_check(row["test"], entry, upstream, reference)
                tasks.append(
                    Task(
                        id=task_id_for(upstream),
                        source=SOURCE,
                        group=upstream,
                        description=row["instruction"],
                        buggy_code=row["declaration"] + row["buggy_solution"],
                        reference_code=reference,
                        entry_point=entry,
                        tests=tests,
                        metadata={
                            "upstream_id": upstream,
                            "bug_type": row.get("bug_type"),
                            "failure_symptoms": row.get("failure_symptoms"),
                        },
                    )
                )
            except KeyError as err:
                raise ValueError(f"{path}:{lineno}: missing field {err}") from None
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
    return tasks
