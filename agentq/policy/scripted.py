"""A deterministic stand-in for a model: tests and the cluster-CI mock image run whole rounds with it.

Each sample is drawn from a configured mixture (reference fix, the buggy code, a mutated reference, or an
answer with no usable code) by a generator seeded from (seed, task id, prompt text, sample index) and
nothing else, so the same call always returns the same answers and search changes can be judged on a
fixed, known success probability. Critique prompts get a ranking in the format the parser reads.
Repair prompts (repo tasks) get SEARCH/REPLACE edits from the same mixture: the reference is the bug patch
inverted, "buggy" an edit that changes nothing, "mutant" a wrong edit (the bug kept, a line touched beside
it), "garbage" an answer with no edit. Their critiques are judged by how many of a candidate diff's changed lines
are the fix's (the bug patch inverted).

Token counts are an estimate, since the mock has no tokenizer: one token per word (a run of letters, digits and
underscores) and one per other non-space character, for completions and for the prompt's messages as
`Prompt.text()` writes them plus the answer prefix. Code tokenizers split code a little finer, so on code this
counts rather fewer tokens than a real model's; it is deterministic and grows with the text, which is what the
token accounting of search and evaluation needs to be tested on.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable
from functools import partial

from agentq.config import ScriptedSpec
from agentq.policy.base import BatchPolicy, PolicyError, Prompt, Request, Sample, request_samples
from agentq.policy.prompts import extract_code, format_ranking
from agentq.repair.patch import diff_hunks, search_replace
from agentq.tasks.schema import RepoTask, Task

CATEGORIES = ("reference", "buggy", "mutant", "garbage")
REWRITE_FORMATS = (
    "Here is the corrected program:\n\n```python\n{code}```\n",
    "```python\n{code}```",
    "The bug is fixed in the version below.\n\n```python\n{code}```\n\nThis should pass the tests.",
)
GARBAGE_ANSWERS = (
    "I am not sure what the bug is. Could you provide more context?",
    "```python\ndef solution(:\n    return\n```",
    "The fix is to check the loop bounds and the return value carefully.",
)
FLIPPED_COMPARISONS: dict[type, type] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
SWAPPED_OPERATORS: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.And: ast.Or, ast.Or: ast.And,
}
NON_COMMUTATIVE = (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)


def stable_rng(*parts: object) -> random.Random:
    """A generator that depends only on `parts` (Python's own hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _flip_comparison(node: ast.Compare, i: int) -> None:
    node.ops[i] = FLIPPED_COMPARISONS[type(node.ops[i])]()


def _bump_constant(node: ast.Constant) -> None:
    node.value += 1


def _swap_operator(node: ast.BinOp | ast.BoolOp) -> None:
    node.op = SWAPPED_OPERATORS[type(node.op)]()


def _swap_operands(node: ast.BinOp) -> None:
    node.left, node.right = node.right, node.left


def _mutation_sites(tree: ast.AST) -> list[Callable[[], None]]:
    """Every small bug that could be planted in tree, as closures that plant it in place."""
    sites: list[Callable[[], None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sites += [partial(_flip_comparison, node, i) for i, op in enumerate(node.ops)
                      if type(op) in FLIPPED_COMPARISONS]
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites.append(partial(_bump_constant, node))
        elif isinstance(node, ast.BinOp | ast.BoolOp) and type(node.op) in SWAPPED_OPERATORS:
            sites.append(partial(_swap_operator, node))
        if isinstance(node, ast.BinOp) and isinstance(node.op, NON_COMMUTATIVE):
            sites.append(partial(_swap_operands, node))
    return sites


def mutate(code: str, rng: random.Random) -> str | None:
    """code with one planted bug (flipped comparison, off-by-one constant, swapped operator or operands).

    None when the code does not parse or offers no site whose mutation changes it.
    """
    try:
        original = ast.unparse(ast.parse(code))
    except SyntaxError:
        return None
    count = len(_mutation_sites(ast.parse(code)))
    for index in rng.sample(range(count), count):
        tree = ast.parse(code)  # fresh tree per try: a planted site must not leak into the next attempt
        _mutation_sites(tree)[index]()
        mutated = ast.unparse(tree)
        if mutated != original:
            return mutated + "\n"
    return None


def _normalised(code: str) -> str:
    try:
        return ast.unparse(ast.parse(code))
    except SyntaxError:
        return code


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, _normalised(a), _normalised(b), autojunk=False).ratio()


def _changed_lines(diff: str, inverted: bool = False) -> Counter[str]:
    """A diff's removed and added lines ("-x", "+y"); `inverted`: as the diff that undoes it would have them."""
    flip = {"-": "+", "+": "-"} if inverted else {"-": "-", "+": "+"}
    return Counter(flip[ln[0]] + ln[1:].rstrip() for ln in diff.splitlines()
                   if ln[:1] in flip and not ln.startswith(("--- ", "+++ ")))


def _overlap(a: Counter[str], b: Counter[str]) -> float:
    """Dice overlap of two multisets of changed lines: 1.0 the same change, 0.0 nothing shared (or empty)."""
    total = sum(a.values()) + sum(b.values())
    return 2 * sum((a & b).values()) / total if total else 0.0


def token_count(text: str) -> int:
    """The mock's token estimate (see the module docstring): words and other non-space characters."""
    return len(re.findall(r"\w+|[^\w\s]", text))


class ScriptedPolicy(BatchPolicy):
    def __init__(self, spec: ScriptedSpec) -> None:
        self.spec = spec
        weights = [spec.p_reference, spec.p_buggy, spec.p_mutant, spec.p_garbage]
        total = sum(weights)
        if total <= 0:
            raise PolicyError("model.scripted: pReference + pBuggy + pMutant + pGarbage must be above 0")
        self.weights = [w / total for w in weights]

    def generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        out = []
        for request in requests:
            prompt, n, temperature, seed = request.prompt, request.n, request.temperature, request.seed
            if prompt.task is None:
                raise PolicyError("scripted backend: every prompt needs Prompt.task (it answers from the task)")
            prompt_hash = hashlib.sha256(prompt.text().encode()).hexdigest()
            samples = []
            for index in range(1 if temperature <= 0 else n):  # greedy: one answer, as a real model gives
                rng = stable_rng(seed, prompt.task.id, prompt_hash, index)
                text = (self._critique(prompt, rng) if prompt.purpose == "critique" else
                        self._repair(prompt.task, rng) if isinstance(prompt.task, RepoTask) else
                        self._rewrite(prompt, rng))
                samples.append(Sample(text=text, logprob=None, tokens=token_count(text)))
            out.append(request_samples(request, samples, token_count(prompt.text() + prompt.answer_prefix)))
        return out

    def draw(self, task: Task, rng: random.Random) -> tuple[str, str | None]:
        """(category, code) for one sample; code is None for garbage.

        Without a reference, the buggy code stands in for it (its mutants are still plausible attempts).
        """
        category = rng.choices(CATEGORIES, weights=self.weights)[0]
        base = task.reference_code or task.buggy_code
        if category == "reference":
            return category, base
        if category == "buggy":
            return category, task.buggy_code
        if category == "mutant":
            mutated = mutate(base, rng)
            return ("mutant", mutated) if mutated else ("buggy", task.buggy_code)
        return category, None

    def _rewrite(self, prompt: Prompt, rng: random.Random) -> str:
        assert prompt.task is not None
        _, code = self.draw(prompt.task, rng)
        if code is None:
            return rng.choice(GARBAGE_ANSWERS)
        code = code.rstrip("\n") + "\n"
        if prompt.purpose == "zero_shot":
            thought = f"The function `{prompt.task.entry_point}` mishandles a case; the fix is below."
            return f"THOUGHT: {thought}\nCODE:\n```python\n{code}```"
        return rng.choice(REWRITE_FORMATS).format(code=code)

    def _repair(self, task: RepoTask, rng: random.Random) -> str:
        category = rng.choices(CATEGORIES, weights=self.weights)[0]
        hunks = diff_hunks(task.bug_patch)  # (path, pristine, buggy): the fix edits the buggy side back
        if category == "garbage" or not hunks:
            return rng.choice(GARBAGE_ANSWERS)
        blocks = []
        for path, fixed, buggy in hunks:
            if category == "reference":
                new = fixed
            elif category == "buggy":
                new = buggy
            else:  # a wrong edit: the bug stays, the hunk's first code line gains a comment
                lines = buggy.splitlines(keepends=True)
                first = next((i for i, ln in enumerate(lines) if ln.strip() and not ln.rstrip().endswith("\\")), 0)
                lines[first] = lines[first].rstrip("\n") + "  # checked\n"
                new = "".join(lines)
            blocks.append((path, buggy, new))
        return "I will fix the bug with this edit:\n\n" + search_replace(blocks)

    def _critique(self, prompt: Prompt, rng: random.Random) -> str:
        assert prompt.task is not None
        task, k = prompt.task, len(prompt.candidates)
        mode = self.spec.critique
        if mode == "garbage" or k == 0:
            return "All of the candidates look reasonable to me."
        if isinstance(task, RepoTask):
            fix = _changed_lines(task.bug_patch, inverted=True)
            scores = [_overlap(_changed_lines(c), fix) for c in prompt.candidates]
        else:
            codes = [extract_code(c, task.entry_point) or c for c in prompt.candidates]
            scores = ([_similarity(code, task.reference_code) for code in codes] if task.reference_code else
                      [1.0 - _similarity(code, task.buggy_code) for code in codes])
        order = sorted(range(k), key=lambda i: (-scores[i], i))
        if mode == "reverse":
            order.reverse()
        elif mode == "random":
            rng.shuffle(order)
        # Reason first, rank last, as the prompt asks; a prefix already holding the label is not repeated.
        answer = f"Candidate {order[0] + 1} looks most likely to be correct.\n{format_ranking(order)}"
        return answer.removeprefix(prompt.answer_prefix.strip()).strip() if prompt.answer_prefix else answer

