"""Bugs a model writes (SWE-smith's "LM rewrite" mode): a function of the library, rewritten with a subtle bug.

Procedural mutants are one-token slips; a model can write the bugs people write (a wrong branch, a dropped
case, an off-by-one in a loop's bookkeeping). The model is asked, through the policy interface, to rewrite one
function with a bug while keeping its name and signature; its answer becomes a `Mutation` of the function's
lines (operator `lm_rewrite`) and then goes through exactly the checks every mutant passes (agentq/tasks/repos.py:
caught by the covering tests, P2P intact on the mutant, subset green on the original). An answer that does not
parse, renames the function, or changes nothing is dropped before any run.
"""

from __future__ import annotations

import ast
import random
import re
import textwrap
from typing import TYPE_CHECKING

from agentq.tasks.mutate import Mutation

if TYPE_CHECKING:
    from agentq.policy.base import Policy

OPERATOR = "lm_rewrite"
REWRITE_PROMPT = """Here is a function from the Python library {name}:

```python
{code}
```

Rewrite this function so that it has one subtle bug, the kind a developer could write by mistake: it must still \
run, keep its name, signature and docstring, and look plausible. Do not add comments that point at the bug. Reply \
with the whole rewritten function in one ```python block."""
_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def functions(source: str, min_lines: int = 4) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions (and methods) worth rewriting: at least `min_lines` long, with no function defined inside."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return [node for node in ast.walk(tree) if isinstance(node, kinds)
            and (node.end_lineno or node.lineno) - node.lineno + 1 >= min_lines
            and not any(isinstance(n, kinds) for n in ast.walk(node) if n is not node)]


def span(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, int]:
    """The function's lines, decorators included (1-based, inclusive)."""
    return min([node.lineno, *(d.lineno for d in node.decorator_list)]), node.end_lineno or node.lineno


def to_mutation(source: str, node: ast.FunctionDef | ast.AsyncFunctionDef, answer: str) -> Mutation | None:
    """The model's rewrite as a mutation of the function's lines, re-indented to the original; None when it is
    not a rewrite of this function."""
    match = _BLOCK.search(answer)
    code = textwrap.dedent(match.group(1) if match else answer).strip("\n")
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(defs) != 1 or defs[0].name != node.name:
        return None
    lines = source.splitlines(keepends=True)
    start, end = span(node)
    old = tuple(lines[start - 1 : end])
    indent = old[0][: len(old[0]) - len(old[0].lstrip())]
    new = tuple(f"{indent}{line}\n" if line.strip() else "\n" for line in code.splitlines())
    if [ln.strip() for ln in new if ln.strip()] == [ln.strip() for ln in old if ln.strip()]:
        return None
    mutation = Mutation(OPERATOR, node.name, start, end, old, new)
    try:
        ast.parse(mutation.apply(source))
    except SyntaxError:
        return None
    return mutation


def rewrites(policy: Policy, name: str, source: str, covered: set[int], count: int, seed: str) -> list[Mutation]:
    """Up to `count` model-written bugs in functions some stable test runs (a line of theirs is `covered`)."""
    from agentq.policy.base import Prompt, Request

    candidates = [n for n in functions(source) if covered & set(range(*span(n)))]
    random.Random(seed).shuffle(candidates)
    chosen = candidates[:count]
    if not chosen:
        return []
    lines = source.splitlines(keepends=True)
    requests = [Request(Prompt(messages=[{"role": "user", "content": REWRITE_PROMPT.format(
        name=name, code=textwrap.dedent("".join(lines[span(n)[0] - 1 : span(n)[1]])).rstrip())}],
        purpose="rewrite"), 1, 0.8, 1024, i) for i, n in enumerate(chosen)]
    answers = policy.generate_batch(requests)
    out = []
    for node, samples in zip(chosen, answers, strict=True):
        mutation = to_mutation(source, node, samples[0].text) if samples else None
        if mutation is not None:
            out.append(mutation)
    return out
